from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from retllm.errors import ConfigError
from retllm.eval.datasets import DATASETS, iter_json_records, load


def png(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), (200, 30, 30)).save(path)
    return path


def karpathy_entry(i: int, split: str = "test", n: int = 5, filepath: str | None = None) -> dict:
    e = {
        "filename": f"{1000 + i}.jpg",
        "imgid": i,
        "split": split,
        "sentences": [{"raw": f"caption {j} of image {i}.", "sentid": 5 * i + j} for j in range(n)],
    }
    if filepath:
        e["filepath"] = filepath
    return e


def write_karpathy(data: Path, name: str, entries: list) -> Path:
    data.mkdir(parents=True, exist_ok=True)
    for e in entries:
        if isinstance(e, dict) and "filename" in e:
            png(data / "images" / e["filename"])
    (data / f"dataset_{name}.json").write_text(json.dumps({"images": entries, "dataset": name}))
    return data


def test_karpathy_test_split_ids_and_positives(tmp_path: Path) -> None:
    entries = [karpathy_entry(0, "train"), karpathy_entry(1), karpathy_entry(2, "val"), karpathy_entry(3)]
    ds = load("flickr30k", write_karpathy(tmp_path, "flickr30k", entries))
    assert list(ds.images) == ["1001", "1003"] and ds.problems == []
    assert len(ds.texts) == 10 and ds.texts["1001#2"] == "caption 2 of image 1."
    assert ds.image_to_texts["1003"] == {f"1003#{j}" for j in range(5)}
    assert ds.text_to_images["1003#4"] == {"1003"}
    assert all(p.is_file() for p in ds.images.values())
    assert (ds.name, ds.split) == ("flickr30k", "test")
    assert list(load("flickr30k", tmp_path, split="val").images) == ["1002"]


def test_coco_looks_in_images_then_filepath_then_data(tmp_path: Path) -> None:
    entries = [karpathy_entry(i, filepath="val2014") for i in range(3)]
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": entries}))
    png(tmp_path / "images" / "1000.jpg")
    png(tmp_path / "val2014" / "1000.jpg")
    png(tmp_path / "val2014" / "1001.jpg")
    png(tmp_path / "1002.jpg")
    ds = load("coco", tmp_path)
    assert ds.images == {
        "1000": tmp_path / "images" / "1000.jpg",
        "1001": tmp_path / "val2014" / "1001.jpg",
        "1002": tmp_path / "1002.jpg",
    }


def test_karpathy_bad_entries_are_problems_and_the_rest_load(tmp_path: Path) -> None:
    no_image = karpathy_entry(1)
    no_caps = karpathy_entry(2, n=0)
    dup = karpathy_entry(3)
    dup["sentences"][1]["raw"] = dup["sentences"][0]["raw"] = "a dog."
    other = karpathy_entry(4)
    other["sentences"][0]["raw"] = "a dog."  # same text as another image's caption
    other["sentences"][2] = {"sentid": 1}  # no raw
    entries = [karpathy_entry(0), no_image, no_caps, "garbage", {"split": "test"}, dup, other]
    write_karpathy(tmp_path, "flickr30k", entries)
    (tmp_path / "images" / "1001.jpg").unlink()
    ds = load("flickr30k", tmp_path)
    assert list(ds.images) == ["1000", "1003", "1004"]
    assert ds.problems == [
        "dataset_flickr30k.json: images[1]: image 1001.jpg not found in images/, flickr30k-images/, flickr30k_images/, "
        "flickr30k_images/flickr30k_images/, ./",
        "dataset_flickr30k.json: images[2]: no captions",
        "dataset_flickr30k.json: images[3]: not an object",
        "dataset_flickr30k.json: images[4]: no filename",
        "dataset_flickr30k.json: images[6].sentences[2]: no caption text",
    ]
    # duplicate captions keep separate ids, each positive only for its own image
    assert ds.texts["1003#0"] == ds.texts["1003#1"] == ds.texts["1004#0"] == "a dog."
    assert ds.text_to_images["1003#0"] == {"1003"} and ds.text_to_images["1004#0"] == {"1004"}
    assert ds.image_to_texts["1004"] == {"1004#0", "1004#1", "1004#3", "1004#4"}


def test_karpathy_non_utf8_caption_is_a_problem(tmp_path: Path) -> None:
    write_karpathy(tmp_path, "coco", [karpathy_entry(0), karpathy_entry(1)])
    f = tmp_path / "dataset_coco.json"
    f.write_bytes(f.read_bytes().replace(b"caption 3 of image 1", b"caption \xff of image 1"))
    ds = load("coco", tmp_path)
    assert ds.problems == ["dataset_coco.json: images[1].sentences[3]: caption is not UTF-8"]
    assert len(ds.texts) == 9


def test_limit_keeps_the_first_images_in_file_order(tmp_path: Path) -> None:
    entries = [karpathy_entry(i, "train" if i % 2 else "test") for i in range(10)]
    ds = load("flickr30k", write_karpathy(tmp_path, "flickr30k", entries), limit=3)
    assert list(ds.images) == ["1000", "1002", "1004"] and len(ds.texts) == 15
    with pytest.raises(ConfigError, match="nothing to evaluate"):  # not an empty run
        load("flickr30k", tmp_path, limit=0)


def test_any_single_dataset_file_is_used(tmp_path: Path) -> None:
    write_karpathy(tmp_path, "f30k_renamed", [karpathy_entry(0)])
    assert list(load("flickr30k", tmp_path).images) == ["1000"]
    write_karpathy(tmp_path, "other", [karpathy_entry(0)])
    with pytest.raises(ConfigError, match="several dataset files"):
        load("flickr30k", tmp_path)


def test_missing_folder_or_file_and_unknown_names_are_config_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="does not exist"):
        load("coco", tmp_path / "nope")
    with pytest.raises(ConfigError, match=r"dataset_coco\.json.*dataset_\*\.json"):
        load("coco", tmp_path)
    with pytest.raises(ConfigError, match="coco, flickr30k, mbeir, sharegpt4v, urban1k"):
        load("mscoco", tmp_path)
    with pytest.raises(ConfigError, match="image/ and caption/"):
        load("urban1k", tmp_path)
    with pytest.raises(ConfigError, match="share-captioner"):
        load("sharegpt4v", tmp_path)
    with pytest.raises(ConfigError, match="only the 'test' split"):
        load("urban1k", tmp_path, split="train")
    with pytest.raises(ConfigError, match="limit"):
        load("coco", tmp_path, limit=-1)
    (tmp_path / "dataset_coco.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not a Karpathy split file"):
        load("coco", tmp_path)
    assert set(DATASETS) == {"flickr30k", "coco", "urban1k", "sharegpt4v", "mbeir"}


def test_urban1k_pairs_by_stem_not_listing_order(tmp_path: Path) -> None:
    for stem in ["10", "2", "1", "3", "orphan"]:
        png(tmp_path / "image" / f"{stem}.jpg")
    (tmp_path / "caption").mkdir()
    for stem in ["1", "2", "10", "3", "4"]:
        (tmp_path / "caption" / f"{stem}.txt").write_text(f"  long caption of {stem}\n")
    (tmp_path / "caption" / "3.txt").write_bytes(b"line one\nbad \xc3\x28 byte\n")
    ds = load("urban1k", tmp_path)
    assert list(ds.images) == ["1", "2", "10"]  # numeric order
    assert ds.texts == {"1#0": "long caption of 1", "2#0": "long caption of 2", "10#0": "long caption of 10"}
    assert ds.image_to_texts["10"] == {"10#0"} and ds.text_to_images["2#0"] == {"2"}
    assert ds.problems == [
        "caption/3.txt:2: not UTF-8 (byte 13)",
        "caption/4.txt: no image file image/4.*",
        "image/orphan.jpg: no caption file caption/orphan.txt",
    ]
    assert list(load("urban1k", tmp_path, limit=2).images) == ["1", "2"]


def sharegpt_record(i: int, caption: str | None = None, image: str | None = None) -> dict:
    return {
        "id": f"sa_{i}",
        "image": image or f"sam/images/sa_{i}.jpg",
        "conversations": [
            {"from": "human", "value": "<image>\nDescribe this image in detail."},
            {"from": "gpt", "value": caption or f"A detailed caption of picture {i}."},
            {"from": "gpt", "value": "not this one"},
        ],
    }


def test_sharegpt4v_first_1k_entries_and_bad_records(tmp_path: Path) -> None:
    records = [sharegpt_record(i) for i in range(1003)]
    records[1] = {"id": "x", "image": "../escape.jpg", "conversations": []}
    records[2] = sharegpt_record(2) | {"conversations": [{"from": "human", "value": "hi"}]}
    records[3] = sharegpt_record(3, image="sam/images/missing.jpg")
    records[4] = ["not", "an", "object"]
    for i in [0, 2, 5, 996, 997, 998, 999, 1000]:  # only a few images exist (fast)
        png(tmp_path / f"sam/images/sa_{i}.jpg")
    text = json.dumps(records, indent=1)
    (tmp_path / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(text)
    starts = [n for n, line in enumerate(text.splitlines(), start=1) if line in (" {", " [")]  # where records begin
    ds = load("sharegpt4v", tmp_path)
    assert list(ds.images) == ["sa_0", "sa_5", "sa_996", "sa_997", "sa_998", "sa_999"]
    assert ds.texts["sa_0#0"] == "A detailed caption of picture 0."
    assert ds.text_to_images["sa_999#0"] == {"sa_999"} and ds.image_to_texts["sa_5"] == {"sa_5#0"}
    f = "share-captioner_coco_lcs_sam_1246k_1107.json"
    assert starts[:2] == [2, 20]
    assert ds.problems[:4] == [
        f"{f}:{starts[1]}: no relative image path",
        f"{f}:{starts[2]}: no gpt caption",
        f"{f}:{starts[3]}: image sam/images/missing.jpg not found",
        f"{f}:{starts[4]}: not an object",
    ]
    assert len(ds.problems) == 4 + 990  # 6..995 not found; sa_1000 exists but is past the first 1,000
    assert list(load("sharegpt4v", tmp_path, limit=2).images) == ["sa_0", "sa_5"]


def test_sharegpt4v_json_lines_malformed_line_and_non_utf8(tmp_path: Path) -> None:
    for i in range(4):
        png(tmp_path / f"sam/images/sa_{i}.jpg")
    lines = [json.dumps(sharegpt_record(i)).encode() for i in range(4)]
    lines[1] = b'{"id": "sa_1", "image": '
    lines[2] = lines[2].replace(b"picture 2", b"picture \xff")
    (tmp_path / "share-captioner.jsonl").write_bytes(b"\n".join(lines) + b"\n")
    ds = load("sharegpt4v", tmp_path)
    assert list(ds.images) == ["sa_0", "sa_3"]
    assert ds.problems[0].startswith("share-captioner.jsonl:2: malformed JSON")
    assert ds.problems[1] == "share-captioner.jsonl:3: caption is not UTF-8"


@pytest.mark.parametrize("chunk_size", [1, 3, 7, 4096])
def test_json_list_reader_across_chunk_boundaries(tmp_path: Path, chunk_size: int) -> None:
    records = [{"k": i, "s": "é" * i + "\n"} for i in range(6)]
    f = tmp_path / "a.json"
    f.write_text("\n  [\n" + ",\n".join(json.dumps(r, ensure_ascii=False) for r in records) + "\n]\n")
    assert list(iter_json_records(f, chunk_size=chunk_size)) == [(i + 3, r) for i, r in enumerate(records)]
    f.write_text('[{"k": 0},\n {"k": 1,,},\n {"k": 2}]')
    got = list(iter_json_records(f, chunk_size=chunk_size))
    assert got[0] == (1, {"k": 0}) and got[1][0] == 2 and isinstance(got[1][1], ValueError) and len(got) == 2
    f.write_text("[]")
    assert list(iter_json_records(f, chunk_size=chunk_size)) == []


def test_karpathy_split_must_exist_and_captions_are_capped_at_five(tmp_path) -> None:
    import json

    from PIL import Image

    from retllm.errors import ConfigError
    from retllm.eval.datasets import load

    (tmp_path / "images").mkdir()
    Image.new("RGB", (4, 4)).save(tmp_path / "images" / "a.png")
    sents = [{"raw": f"caption {n}"} for n in range(7)]
    entry = {"filename": "a.png", "split": "test", "sentences": sents}
    (tmp_path / "dataset_coco.json").write_text(json.dumps({"images": [entry]}))
    with pytest.raises(ConfigError, match="no entry of split 'tset'.*splits there: test"):
        load("coco", tmp_path, split="tset")
    es = load("coco", tmp_path)
    assert sorted(es.texts) == [f"a#{n}" for n in range(5)] and "7 captions, the first 5 kept" in es.problems[0]


# --- M-BEIR ---------------------------------------------------------------------------------------------------


def write_mbeir(data: Path, task: str = "mscoco_task0", *, queries: list, pool: list, split: str = "test") -> Path:
    (data / "query" / split).mkdir(parents=True, exist_ok=True)
    (data / "cand_pool" / "local").mkdir(parents=True, exist_ok=True)
    lines = [q if isinstance(q, str) else json.dumps(q) for q in queries]
    (data / "query" / split / f"mbeir_{task}_{split}.jsonl").write_text("\n".join(lines) + "\n")
    lines = [c if isinstance(c, str) else json.dumps(c) for c in pool]
    (data / "cand_pool" / "local" / f"mbeir_{task}_cand_pool.jsonl").write_text("\n".join(lines) + "\n")
    return data


def mbeir_query(qid: str, text: str | None, image: str | None, pos: list[str]) -> dict:
    modality = ",".join(m for m, v in (("image", image), ("text", text)) if v)
    return {"qid": qid, "query_txt": text, "query_img_path": image, "query_modality": modality, "pos_cand_list": pos}


def test_mbeir_bad_lines_are_problems_with_file_and_line_and_the_rest_load(tmp_path: Path) -> None:
    png(tmp_path / "mbeir_images" / "a.jpg")
    png(tmp_path / "mbeir_images" / "b.jpg")
    pool = [
        {"did": "1:1", "txt": None, "img_path": "mbeir_images/a.jpg", "modality": "image"},
        {"did": "1:2", "txt": "a caption too", "img_path": "mbeir_images/b.jpg", "modality": "image,text"},
        "{not json",
        {"did": "1:3", "txt": None, "img_path": "mbeir_images/gone.jpg", "modality": "image"},
        {"did": "1:4", "txt": None, "img_path": "/etc/passwd", "modality": "image"},
        {"did": "1:1", "txt": "dup", "img_path": None, "modality": "text"},
        {"txt": "no did"},
    ]
    queries = [
        mbeir_query("9:1", "a red square", None, ["1:1"]),
        mbeir_query("9:2", "only missing positives", None, ["1:3"]),
        mbeir_query("9:3", None, "mbeir_images/b.jpg", ["1:2", "1:9"]),
        "[broken",
        mbeir_query("9:4", None, None, ["1:1"]),
        mbeir_query("9:5", None, "mbeir_images/none.jpg", ["1:1"]),
        {"qid": "9:6", "query_txt": "no positives listed"},
    ]
    ds = load("mbeir", write_mbeir(tmp_path, queries=queries, pool=pool))
    assert list(ds.pools) == ["mscoco_task0"] and [it.id for it in ds.pools["mscoco_task0"]] == ["1:1", "1:2"]
    (sec,) = ds.sections()
    assert (sec.name, sec.corpus, sec.using) == ("mscoco_task0", "mscoco_task0", None)
    assert list(sec.queries) == ["9:1", "9:3"]
    assert sec.positives == {"9:1": {"1:1"}, "9:3": {"1:2"}}
    assert sec.queries["9:3"].image == str(tmp_path / "mbeir_images" / "b.jpg") and sec.queries["9:3"].text is None
    pool_file, query_file = (
        "cand_pool/local/mbeir_mscoco_task0_cand_pool.jsonl",
        "query/test/mbeir_mscoco_task0_test.jsonl",
    )
    want = [
        f"{pool_file}:3: malformed JSON",
        f"{pool_file}:4: image mbeir_images/gone.jpg not found",
        f"{pool_file}:5: image path '/etc/passwd' is not a relative path",
        f"{pool_file}:6: duplicate did '1:1'",
        f"{pool_file}:7: no did",
        f"{query_file}:2: no positive in the candidate pool",
        f"{query_file}:3: 1 positive(s) not in the pool, ignored",
        f"{query_file}:4: malformed JSON",
        f"{query_file}:5: neither query text nor image",
        f"{query_file}:6: image mbeir_images/none.jpg not found",
        f"{query_file}:7: no pos_cand_list",
    ]
    assert len(ds.problems) == len(want)
    for got, w in zip(ds.problems, want, strict=True):
        assert got.startswith(w), (got, w)


def test_mbeir_tasks_limit_and_errors(tmp_path: Path) -> None:
    pool = [{"did": f"1:{i}", "txt": f"text {i}", "img_path": None, "modality": "text"} for i in range(5)]
    queries = [mbeir_query(f"9:{i}", f"q {i}", None, [f"1:{i}"]) for i in range(5)]
    write_mbeir(tmp_path, "a_task1", queries=queries, pool=pool)
    write_mbeir(tmp_path, "b_task1", queries=queries[:2], pool=pool)
    assert [s.name for s in load("mbeir", tmp_path).sections()] == ["a_task1", "b_task1"]
    ds = load("mbeir", tmp_path, tasks=["b_task1"], limit=1)
    assert [s.name for s in ds.sections()] == ["b_task1"] and list(ds.sections()[0].queries) == ["9:0"]
    assert len(ds.pools["b_task1"]) == 5  # the pool is whole: the limit is on queries
    with pytest.raises(ConfigError, match=r"no query file for nope_task0; there: a_task1, b_task1"):
        load("mbeir", tmp_path, tasks=["nope_task0"])
    with pytest.raises(ConfigError, match=r"no query/val/ folder"):
        load("mbeir", tmp_path, split="val")
    with pytest.raises(ConfigError, match="--task is for mbeir"):
        load("flickr30k", tmp_path, tasks=["a_task1"])
    (tmp_path / "cand_pool" / "local" / "mbeir_a_task1_cand_pool.jsonl").unlink()
    ds = load("mbeir", tmp_path)
    assert [s.name for s in ds.sections()] == ["b_task1"]
    assert ds.problems == [
        "cand_pool/local/: no local candidate pool for a_task1 "
        "(mbeir_a_task1_test_cand_pool.jsonl or mbeir_a_task1_cand_pool.jsonl); task skipped"
    ]
    (tmp_path / "cand_pool" / "local" / "mbeir_b_task1_cand_pool.jsonl").rename(
        tmp_path / "cand_pool" / "local" / "mbeir_b_task1_test_cand_pool.jsonl"  # the COCO pools' name in the release
    )
    assert [s.name for s in load("mbeir", tmp_path).sections()] == ["b_task1"]
    (tmp_path / "cand_pool" / "local" / "mbeir_b_task1_test_cand_pool.jsonl").unlink()
    with pytest.raises(ConfigError, match="mbeir: nothing to evaluate"):  # not a run that evaluates nothing, exit 0
        load("mbeir", tmp_path)


# --- Hugging Face save_to_disk ----------------------------------------------------------------------------------


def test_hf_saved_flickr_with_images_split_column_and_bad_rows(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    import io

    def jpeg(i: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 40, 10, 10)).save(buf, format="JPEG")
        return buf.getvalue()

    rows = {
        "image": [{"bytes": jpeg(i), "path": f"{i}.jpg"} for i in range(5)],
        "caption": [[f"caption {j} of {i}" for j in range(6 if i == 0 else 5)] for i in range(5)],
        "filename": [f"{100 + i}.jpg" for i in range(5)],
        "split": ["test", "train", "test", "test", "test"],
    }
    rows["caption"][3] = ["", "  "]  # no usable caption
    rows["image"][4] = {"bytes": b"not an image", "path": "x.jpg"}
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "filename": datasets.Value("string"),
            "split": datasets.Value("string"),
        }
    )
    datasets.Dataset.from_dict(rows, features=features).save_to_disk(str(tmp_path / "hf"))
    ds = load("flickr30k", tmp_path / "hf")
    assert list(ds.images) == ["100", "102"]
    assert ds.texts["102#4"] == "caption 4 of 2" and len(ds.image_to_texts["100"]) == 5  # capped at 5
    assert Image.open(ds.images["102"]).getpixel((4, 4))[0] > 60  # the row's own picture, written once
    assert [p.split(":")[0] for p in ds.problems] == ["row 0", "row 3", "row 4"]  # rows of the file, not of the split
    assert "6 captions" in ds.problems[0] and "no captions" in ds.problems[1] and "not an image" in ds.problems[2]
    assert list(load("flickr30k", tmp_path / "hf", split="train").images) == ["101"]
    with pytest.raises(ConfigError, match=r"no row of split 'val'.*splits there: test, train"):
        load("flickr30k", tmp_path / "hf", split="val")


def test_hf_saved_dataset_dict_by_split_key(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    png(tmp_path / "coco" / "images" / "1.jpg")
    test = datasets.Dataset.from_dict({"filename": ["1.jpg", "2.jpg"], "sentences": [["a cat"], ["a dog"]]})
    datasets.DatasetDict({"test": test}).save_to_disk(str(tmp_path / "coco"))
    ds = load("coco", tmp_path / "coco")
    assert list(ds.images) == ["1"] and ds.texts == {"1#0": "a cat"}
    assert ds.problems == ["test[1]: image 2.jpg not found in images/, val2014/, train2014/, ./"]
    with pytest.raises(ConfigError, match=r"no split 'val'.*splits there: test"):
        load("coco", tmp_path / "coco", split="val")


def test_hf_saved_ids_that_look_alike_keep_their_own_images_and_id_zero_is_an_id(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")
    import io

    def jpeg(r: int) -> bytes:
        buf = io.BytesIO()
        Image.new("RGB", (8, 8), (r, 0, 0)).save(buf, format="JPEG")
        return buf.getvalue()

    ids = ["img:1", "img 1", "img/1", "x" * 120 + "a", "x" * 120 + "b", 0]
    rows = {
        "image": [{"bytes": jpeg(40 * i), "path": None} for i in range(len(ids))],
        "caption": [[f"caption {i}"] for i in range(len(ids))],
        "id": [str(i) for i in ids],
    }
    rows["id"][-1] = 0  # an integer id 0 is an id, not "no id"
    features = datasets.Features(
        {
            "image": datasets.Image(),
            "caption": datasets.Sequence(datasets.Value("string")),
            "id": datasets.Value("int64"),
        }
    )
    rows_str = {**rows, "id": [str(i) for i in ids]}
    datasets.Dataset.from_dict(
        rows_str, features=datasets.Features({**features, "id": datasets.Value("string")})
    ).save_to_disk(str(tmp_path / "hf"))
    ds = load("flickr30k", tmp_path / "hf")
    assert list(ds.images) == [str(i) for i in ids] and ds.problems == []
    for i, image_id in enumerate(ids):
        assert Image.open(ds.images[str(image_id)]).getpixel((4, 4))[0] == pytest.approx(40 * i, abs=8)
    datasets.Dataset.from_dict(
        {"image": rows["image"][:3], "caption": rows["caption"][:3], "id": [3, 0, 1]}, features=features
    ).save_to_disk(str(tmp_path / "ints"))
    assert list(load("flickr30k", tmp_path / "ints").images) == ["3", "0", "1"]


def test_a_file_name_that_is_not_utf8_is_a_problem_not_a_crash(tmp_path: Path) -> None:
    entries = [karpathy_entry(1), {**karpathy_entry(2), "filename": "caf\udce9.jpg"}]
    data = write_karpathy(tmp_path, "flickr30k", [entries[0]])
    (data / "dataset_flickr30k.json").write_bytes(
        json.dumps({"images": [entries[0], {**entries[1], "filename": "FNAME"}]})
        .encode()
        .replace(b"FNAME", b"caf\xe9.jpg")
    )
    ds = load("flickr30k", data)
    assert list(ds.images) == ["1001"] and ds.problems == ["dataset_flickr30k.json: images[1]: file name is not UTF-8"]


# --- the folder names the official archives unpack to (issue 18 item 6) -----------------------------------------


@pytest.mark.parametrize(
    ("name", "entry", "stored"),
    [
        ("flickr30k", {"filename": "1000.jpg"}, "flickr30k-images/1000.jpg"),  # flickr30k-images.tar.gz
        ("flickr30k", {"filename": "1000.jpg"}, "flickr30k_images/1000.jpg"),
        ("flickr30k", {"filename": "1000.jpg"}, "flickr30k_images/flickr30k_images/1000.jpg"),  # Kaggle's zip
        ("coco", {"filename": "COCO_val2014_000000001000.jpg", "filepath": "val2014"}, "val2014/"),  # val2014.zip
        ("coco", {"filename": "COCO_train2014_000000001000.jpg", "filepath": "train2014"}, "train2014/"),
        ("coco", {"filename": "COCO_val2014_000000001000.jpg", "filepath": "val2014"}, "images/val2014/"),
        ("coco", {"filename": "COCO_val2014_000000001000.jpg"}, "val2014/"),  # no filepath field: both 2014 folders
        ("coco", {"filename": "COCO_val2014_000000001000.jpg", "filepath": "val2014"}, "val2017/000000001000.jpg"),
        ("coco", {"filename": "COCO_val2014_000000001000.jpg", "filepath": "val2014"}, "train2017/000000001000.jpg"),
    ],
)
def test_karpathy_images_in_the_folders_the_official_archives_unpack_to(
    tmp_path: Path, name: str, entry: dict, stored: str
) -> None:
    """Karpathy's file names the image; the archive decides the folder (COCO 2017 drops the 2014 prefix)."""
    path = tmp_path / (stored + entry["filename"] if stored.endswith("/") else stored)
    png(path)
    entry = entry | {"split": "test", "sentences": [{"raw": "a caption."}]}
    (tmp_path / f"dataset_{name}.json").write_text(json.dumps({"images": [entry]}))
    ds = load(name, tmp_path)
    assert ds.images == {Path(entry["filename"]).stem: path} and ds.problems == []


def test_urban1k_and_sharegpt4v_in_their_release_folders(tmp_path: Path) -> None:
    urban = tmp_path / "u"
    png(urban / "Urban1k" / "image" / "1.jpg")  # Urban1k.zip unpacks to Urban1k/{image,caption}/
    (urban / "Urban1k" / "caption").mkdir()
    (urban / "Urban1k" / "caption" / "1.txt").write_text("a long caption")
    ds = load("urban1k", urban)
    assert ds.images == {"1": urban / "Urban1k" / "image" / "1.jpg"} and ds.texts == {"1#0": "a long caption"}
    share = tmp_path / "s"  # ShareGPT4V's data/ folder: the JSON in sharegpt4v/, image paths relative to data/
    png(share / "coco" / "train2017" / "1.jpg")
    (share / "sharegpt4v").mkdir()
    rec = sharegpt_record(1, image="coco/train2017/1.jpg")
    (share / "sharegpt4v" / "share-captioner_coco_lcs_sam_1246k_1107.json").write_text(json.dumps([rec]))
    ds = load("sharegpt4v", share)
    assert ds.images == {"sa_1": share / "coco" / "train2017" / "1.jpg"}


@pytest.mark.parametrize("name", ["flickr30k", "coco"])
def test_a_load_that_finds_no_image_is_one_error_naming_the_folder_and_the_first_reason(
    tmp_path: Path, name: str
) -> None:
    """Not an empty run that exits 0 with "Corpus: none": where it looked, how many were skipped, the first why."""
    write_karpathy(tmp_path, name, [karpathy_entry(i) for i in range(3)])
    (tmp_path / "images").rename(tmp_path / "pictures")  # a folder name no loader knows
    with pytest.raises(ConfigError) as e:
        load(name, tmp_path)
    msg = str(e.value)
    assert "\n" not in msg and f"{name}: nothing to evaluate in {tmp_path}" in msg
    assert "3 entries skipped" in msg and "first: dataset_" in msg and "image 1000.jpg not found in images/" in msg


def test_urban1k_and_sharegpt4v_with_nothing_usable_are_errors(tmp_path: Path) -> None:
    png(tmp_path / "u" / "image" / "1.jpg")
    (tmp_path / "u" / "caption").mkdir()
    with pytest.raises(ConfigError, match=r"urban1k: nothing to evaluate in .*1 entry skipped, first: image/1\.jpg"):
        load("urban1k", tmp_path / "u")
    (tmp_path / "s").mkdir()
    (tmp_path / "s" / "share-captioner.jsonl").write_text(json.dumps(sharegpt_record(0)) + "\n")
    with pytest.raises(ConfigError, match=r"sharegpt4v: nothing to evaluate .*first: .*sam/images/sa_0\.jpg not found"):
        load("sharegpt4v", tmp_path / "s")


def test_a_caption_no_item_may_hold_skips_that_caption_not_the_run(tmp_path) -> None:
    """A caption with a NUL loaded without a problem, then failed the whole run when the corpus was built."""
    from retllm.eval.datasets import EvalSet

    es = EvalSet("x", "test")
    es.add("a", tmp_path / "a.png", [("a#0", "fine"), ("a#1", "bad\x00caption")])
    es.add("b", tmp_path / "b.png", [("b#0", "\ud800")])
    corpora = es.corpora()
    assert [i.id for i in corpora["images"]] == ["a"] and [i.id for i in corpora["texts"]] == ["a#0"]
    assert [p.split(":")[0] for p in es.problems] == ["a", "b"] and "NUL" in es.problems[0]
