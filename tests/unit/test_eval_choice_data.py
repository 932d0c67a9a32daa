"""The SugarCrepe and MMEB loaders on folders written in each layout, bad entries first."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from retllm.errors import ConfigError, MissingDependencyError
from retllm.eval.choice import SUGARCREPE_CATEGORIES, load_mmeb, load_sugarcrepe


def png(path: Path, colour: tuple[int, int, int] = (200, 30, 30)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (4, 4), colour).save(path)
    return path


def sugar_entry(i: int, **over: object) -> dict:
    e: dict = {"filename": f"{i:012d}.jpg", "caption": f"a dog on sofa {i}", "negative_caption": f"a cat on sofa {i}"}
    e.update(over)
    return e


def write_category(data: Path, cat: str, entries: dict, *, images: str = "images") -> None:
    data.mkdir(parents=True, exist_ok=True)
    for e in entries.values():
        if isinstance(e, dict) and isinstance(e.get("filename"), str) and e["filename"] and "gone" not in e["filename"]:
            png(data / images / e["filename"]) if images else png(data / e["filename"])
    (data / f"{cat}.json").write_text(json.dumps(entries))


# --- SugarCrepe: bad inputs ------------------------------------------------------------------------------------


def test_sugarcrepe_bad_entries_are_reported_and_skipped(tmp_path: Path) -> None:
    entries = {
        "0": sugar_entry(0),
        "1": "not an object",
        "2": sugar_entry(2, caption="  "),
        "3": sugar_entry(3, negative_caption=None),
        "4": sugar_entry(4, filename="gone.jpg"),
        "5": {"caption": "x", "negative_caption": "y"},
        "6": sugar_entry(6),
    }
    for cat in SUGARCREPE_CATEGORIES:
        write_category(tmp_path, cat, entries)
    ds = load_sugarcrepe(tmp_path)
    assert list(ds.categories) == list(SUGARCREPE_CATEGORIES)
    q = ds.categories["add_obj"]
    assert [x.id for x in q] == ["0", "6"]
    assert (q[0].positive, q[0].negative) == ("a dog on sofa 0", "a cat on sofa 0")
    assert q[0].image == tmp_path / "images" / "000000000000.jpg"
    mine = [p for p in ds.problems if p.startswith("add_obj.json: ")]
    assert len(mine) == 5 and len(ds.problems) == 5 * 7
    by_key = {p.split(": ")[1]: p for p in mine}
    assert set(by_key) == {"1", "2", "3", "4", "5"}
    assert "not an object" in by_key["1"]
    assert "caption" in by_key["2"] and "negative_caption" in by_key["3"]
    assert "gone.jpg" in by_key["4"] and "not found" in by_key["4"]
    assert "filename" in by_key["5"]


def test_sugarcrepe_a_missing_or_broken_category_file_is_reported(tmp_path: Path) -> None:
    write_category(tmp_path, "add_obj", {"0": sugar_entry(0)})
    write_category(tmp_path, "swap_att", {"0": sugar_entry(1)})
    (tmp_path / "replace_rel.json").write_text("{ not json")
    (tmp_path / "swap_obj.json").write_text(json.dumps([sugar_entry(2)]))  # a list, not an object of questions
    ds = load_sugarcrepe(tmp_path)
    assert list(ds.categories) == ["add_obj", "swap_att"]
    missing = [p for p in ds.problems if "not found" in p and p.endswith("category skipped")]
    assert len(missing) == 3  # add_att, replace_obj, replace_att
    assert any(p.startswith("replace_rel.json: ") and "JSON" in p for p in ds.problems)
    assert any(p.startswith("swap_obj.json: ") and "object" in p for p in ds.problems)


def test_sugarcrepe_all_files_missing_is_an_error(tmp_path: Path) -> None:
    tmp_path.mkdir(exist_ok=True)
    with pytest.raises(ConfigError, match="no SugarCrepe category file"):
        load_sugarcrepe(tmp_path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_sugarcrepe(tmp_path / "nope")
    write_category(tmp_path, "add_obj", {"0": sugar_entry(0)})
    with pytest.raises(ConfigError, match="unknown SugarCrepe category"):
        load_sugarcrepe(tmp_path, categories=["add_thing"])
    with pytest.raises(ConfigError, match="limit"):
        load_sugarcrepe(tmp_path, limit=-1)


# --- SugarCrepe: layouts and limit -----------------------------------------------------------------------------


@pytest.mark.parametrize("images", ["images", "val2017", ""])
def test_sugarcrepe_image_folders(tmp_path: Path, images: str) -> None:
    write_category(tmp_path, "add_att", {"7": sugar_entry(7)}, images=images)
    ds = load_sugarcrepe(tmp_path, categories=["add_att"])
    (q,) = ds.categories["add_att"]
    assert q.image == (tmp_path / images / "000000000007.jpg" if images else tmp_path / "000000000007.jpg")
    assert ds.problems == []


def test_sugarcrepe_limit_keeps_the_first_valid_questions_per_category(tmp_path: Path) -> None:
    entries = {str(i): sugar_entry(i) for i in range(5)}
    entries["1"] = sugar_entry(1, filename="gone.jpg")
    write_category(tmp_path, "add_obj", entries)
    write_category(tmp_path, "swap_obj", entries)
    ds = load_sugarcrepe(tmp_path, limit=2)
    assert {c: [q.id for q in qs] for c, qs in ds.categories.items()} == {"add_obj": ["0", "2"], "swap_obj": ["0", "2"]}


# --- MMEB ------------------------------------------------------------------------------------------------------

COLUMNS = ("qry_text", "qry_img_path", "tgt_text", "tgt_img_path")


def mmeb_row(qt: str | None, qi: str, tt: list, ti: list | None) -> dict:
    return {"qry_text": qt, "qry_img_path": qi, "tgt_text": tt, "tgt_img_path": ti}


def write_parquet(path: Path, rows: list[dict]) -> Path:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


def write_jsonl(path: Path, rows: list[dict | str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(r if isinstance(r, str) else json.dumps(r) for r in rows) + "\n")
    return path


def i2t_rows() -> list[dict]:
    """Image query -> text candidates (classification-like: one instruction shared by every query)."""
    inst = "<|image_1|>\nRepresent the given image for classification"
    return [
        mmeb_row(inst, "I2T/a.png", ["cat", "dog", "bird"], ["", "", ""]),
        mmeb_row(inst, "I2T/b.png", ["dog", "cat", "bird"], ["", "", ""]),
        mmeb_row(inst, "I2T/c.png", ["bird", "cat", "dog"], ["", "", ""]),
    ]


def t2i_rows() -> list[dict]:
    """Text query -> image candidates, each candidate text the embedding model's instruction."""
    cand = "<|image_1|>\nRepresent the given image."
    return [
        mmeb_row("Find an image: a red thing", "", [cand] * 3, ["T2I/r.png", "T2I/g.png", "T2I/b.png"]),
        mmeb_row("Find an image: a green thing", "", [cand] * 3, ["T2I/g.png", "T2I/b.png", "T2I/r.png"]),
    ]


def images_for(root: Path, rows: list[dict], skip: tuple[str, ...] = ()) -> None:
    for r in rows:
        for p in [r["qry_img_path"], *(r["tgt_img_path"] or [])]:
            if p and p not in skip:
                png(root / p, (len(p) * 37 % 256, ord(p[-5]) % 256, 90))


def test_mmeb_bad_rows_are_reported_and_skipped(tmp_path: Path) -> None:
    rows = [
        *i2t_rows(),
        mmeb_row("q", "", ["a", "b"], ["", "", ""]),  # lengths differ
        mmeb_row("q", "", [], []),  # no candidates
        mmeb_row(None, "", ["a", "b"], ["", ""]),  # no query at all
        mmeb_row("q", "", ["a", ""], ["", ""]),  # a candidate with neither text nor image
        mmeb_row("q", "I2T/gone.png", ["a", "b"], ["", ""]),  # missing query image
        mmeb_row("q", "", ["<|image_1|>", "b"], ["I2T/gone.png", ""]),  # missing candidate image
    ]
    write_parquet(tmp_path / "I2T" / "test-00000-of-00001.parquet", rows)
    images_for(tmp_path / "eval_images", i2t_rows())
    ds = load_mmeb(tmp_path)
    sub = ds.subsets["I2T"]
    assert [q.id for q in sub.queries] == ["0", "1", "2"]
    problems = [p for p in ds.problems if p.startswith("I2T/test-00000-of-00001.parquet: row ")]
    assert len(problems) == 6 and len(ds.problems) == 6
    rows_hit = sorted(int(p.split("row ")[1].split(":")[0]) for p in problems)
    assert rows_hit == [3, 4, 5, 6, 7, 8]
    text = "\n".join(problems)
    assert "gone.png" in text and "not found" in text and "tgt_img_path" in text


def test_mmeb_parquet_layout_placeholders_and_shared_candidates(tmp_path: Path) -> None:
    write_parquet(tmp_path / "I2T" / "test-00000-of-00001.parquet", i2t_rows())
    write_parquet(tmp_path / "T2I" / "test" / "0000.parquet", t2i_rows())  # the parquet-converter layout
    images_for(tmp_path / "eval_images", i2t_rows() + t2i_rows())
    ds = load_mmeb(tmp_path)
    assert ds.problems == [] and list(ds.subsets) == ["I2T", "T2I"]
    i2t, t2i = ds.subsets["I2T"], ds.subsets["T2I"]
    q0 = i2t.queries[0]
    # the instruction every image query shares is the embedding model's, not content: dropped
    assert q0.text is None and q0.image == tmp_path / "eval_images" / "I2T" / "a.png"
    assert i2t.instructions == {"query": "Represent the given image for classification"}
    assert [i2t.candidates[c].text for c in q0.candidates] == ["cat", "dog", "bird"]
    assert len(i2t.candidates) == 3  # the same label is one candidate for every query
    assert i2t.queries[1].candidates[1] == q0.candidates[0]
    assert i2t.positive(i2t.queries[1]) == q0.candidates[1]
    # image candidates: placeholder stripped, the shared instruction dropped; the text query kept as it is
    assert t2i.queries[0].text == "Find an image: a red thing" and t2i.queries[0].image is None
    assert t2i.instructions == {"candidate": "Represent the given image."}
    cands = [t2i.candidates[c] for c in t2i.queries[0].candidates]
    assert [c.text for c in cands] == [None, None, None]
    assert [Path(str(c.image)).name for c in cands] == ["r.png", "g.png", "b.png"]
    assert len(t2i.candidates) == 3 and t2i.queries[1].candidates[0] == t2i.queries[0].candidates[1]


def test_mmeb_keeps_texts_that_differ_and_instructions_on_request(tmp_path: Path) -> None:
    rows = [
        mmeb_row("<|image_1|>\nWhat colour is it?", "V/a.png", ["red", "blue"], ["", ""]),
        mmeb_row("<|image_1|>\nWhat shape is it?", "V/b.png", ["round", "square"], ["", ""]),
    ]
    write_parquet(tmp_path / "V" / "test-00000-of-00001.parquet", rows)
    images_for(tmp_path / "images", rows)  # data/images/ is the other image root
    ds = load_mmeb(tmp_path)
    assert [q.text for q in ds.subsets["V"].queries] == ["What colour is it?", "What shape is it?"]
    assert ds.subsets["V"].instructions == {}
    write_parquet(tmp_path / "I2T" / "test-00000-of-00001.parquet", i2t_rows())
    images_for(tmp_path / "images", i2t_rows())
    kept = load_mmeb(tmp_path, ["I2T"], keep_instructions=True)
    assert kept.subsets["I2T"].queries[0].text == "Represent the given image for classification"


def test_mmeb_jsonl_layout_with_a_malformed_line(tmp_path: Path) -> None:
    wrong_type = json.dumps(mmeb_row("q", "", "not a list", ["", ""]))  # type: ignore[arg-type]
    rows: list[dict | str] = [*t2i_rows(), "{ broken", json.dumps(["a list"]), wrong_type]
    write_jsonl(tmp_path / "T2I" / "test.jsonl", rows)
    images_for(tmp_path / "eval_images", t2i_rows())
    ds = load_mmeb(tmp_path)
    assert [q.id for q in ds.subsets["T2I"].queries] == ["0", "1"]
    assert len(ds.problems) == 3
    assert ds.problems[0].startswith("T2I/test.jsonl:3: ") and "JSON" in ds.problems[0]
    assert ds.problems[1].startswith("T2I/test.jsonl:4: ") and "object" in ds.problems[1]
    assert ds.problems[2].startswith("T2I/test.jsonl:5: ") and "tgt_text" in ds.problems[2]


def test_mmeb_missing_subsets_columns_and_limit(tmp_path: Path) -> None:
    write_parquet(tmp_path / "I2T" / "test-00000-of-00001.parquet", i2t_rows())
    images_for(tmp_path / "eval_images", i2t_rows())
    write_parquet(tmp_path / "Odd" / "test-00000-of-00001.parquet", [{"qry_text": "q", "tgt_text": ["a"]}])
    ds = load_mmeb(tmp_path, ["I2T", "Odd", "Nope"], limit=2)
    assert list(ds.subsets) == ["I2T"] and [q.id for q in ds.subsets["I2T"].queries] == ["0", "1"]
    assert any(p.startswith("Odd/test-00000-of-00001.parquet: ") and "qry_img_path" in p for p in ds.problems)
    assert any(p.startswith("Nope: ") and "test.jsonl" in p for p in ds.problems)
    # the instruction is found over the whole file, so a limit does not change what the queries say
    assert ds.subsets["I2T"].queries[0].text is None
    with pytest.raises(ConfigError, match="no MMEB subset"):
        load_mmeb(tmp_path, ["Nope"])
    with pytest.raises(ConfigError, match="does not exist"):
        load_mmeb(tmp_path / "nope")


def test_mmeb_without_pyarrow_names_the_install_line(tmp_path: Path) -> None:
    """A parquet subset needs pyarrow; without it the error names the extra (a JSONL subset does not need it)."""
    write_parquet(tmp_path / "I2T" / "test-00000-of-00001.parquet", i2t_rows())
    images_for(tmp_path / "eval_images", i2t_rows())
    code = (
        "import sys; sys.modules['pyarrow'] = None; sys.modules['pyarrow.parquet'] = None\n"
        "from retllm.eval.choice import load_mmeb\n"
        "try:\n    load_mmeb(sys.argv[1])\nexcept Exception as e:\n    print(type(e).__name__, e)\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(tmp_path)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(MissingDependencyError.__name__) and "pip install 'retllm[eval]'" in r.stdout
