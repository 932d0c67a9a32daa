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
from retllm.eval.choice_data import MIN_SHARED, MMEB_INSTRUCTION_PREFIXES, MMEB_WHOLE_INSTRUCTIONS


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
T2I_PREFIX = "Find me an everyday image that matches the given caption:"
VQA_PREFIX = "<|image_1|>\nRepresent the given image with the following question:"
WEBQA_CAND = "<|image_1|>\nRepresent the given Wikipedia image with related text information:"


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
        mmeb_row(f"{T2I_PREFIX} a red thing", "", [cand] * 3, ["T2I/r.png", "T2I/g.png", "T2I/b.png"]),
        mmeb_row(f"{T2I_PREFIX} a green thing", "", [cand] * 3, ["T2I/g.png", "T2I/b.png", "T2I/r.png"]),
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
    # image candidates: placeholder stripped, the shared instruction dropped; the text query's shared opening too
    assert t2i.queries[0].text == "a red thing" and t2i.queries[0].image is None
    assert t2i.instructions == {"candidate": "Represent the given image.", "query_prefix": T2I_PREFIX}
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


# --- MMEB: instructions written for embedding models --------------------------------------------------------------


def test_mmeb_instruction_prefixes_are_dropped_and_the_content_kept(tmp_path: Path) -> None:
    """MMEB's own strings: MSCOCO_t2i's caption prefix, the VQA question prefix, WebQA's candidate prefix, and
    VisDial's prefix before a dialogue that has colons of its own (only the instruction's colon counts)."""
    t2i = [
        mmeb_row(
            f"{T2I_PREFIX} A man riding a horse.",
            "",
            ["<|image_1|>\nRepresent the given image."] * 2,
            ["C/a.png", "C/b.png"],
        ),
        mmeb_row(
            f"{T2I_PREFIX} A dog: brown, on grass.",
            "",
            ["<|image_1|>\nRepresent the given image."] * 2,
            ["C/b.png", "C/a.png"],
        ),
    ]
    vqa = [
        mmeb_row(f"{VQA_PREFIX} What is on the table?", "V/a.png", ["cups", "books"], ["", ""]),
        mmeb_row(f"{VQA_PREFIX} How many dogs?", "V/b.png", ["2", "3"], ["", ""]),
    ]
    webqa = [
        mmeb_row(
            "Find a Wikipedia image that answers this question: Where is it?",
            "",
            [f"{WEBQA_CAND} Eiffel Tower. Paris", f"{WEBQA_CAND} Big Ben. London"],
            ["W/a.png", "W/b.png"],
        ),
        mmeb_row(
            "Find a Wikipedia image that answers this question: Who built it?",
            "",
            [f"{WEBQA_CAND} Big Ben. London", f"{WEBQA_CAND} Eiffel Tower. Paris"],
            ["W/b.png", "W/a.png"],
        ),
    ]
    dial = "Represent the given dialogue about an image, which is used for image retrieval:"
    visdial = [
        mmeb_row(
            f"{dial} Q: is it a cat? A: yes",
            "",
            ["<|image_1|>\nRepresent the given image."] * 2,
            ["D/a.png", "D/b.png"],
        ),
        mmeb_row(
            f"{dial} Q: is it red? A: no", "", ["<|image_1|>\nRepresent the given image."] * 2, ["D/b.png", "D/a.png"]
        ),
    ]
    for name, rows in (("MSCOCO_t2i", t2i), ("VQA", vqa), ("WebQA", webqa), ("VisDial", visdial)):
        write_parquet(tmp_path / name / "test-00000-of-00001.parquet", rows)
        images_for(tmp_path / "eval_images", rows)
    ds = load_mmeb(tmp_path)
    assert ds.problems == []
    sub = ds.subsets
    assert [q.text for q in sub["MSCOCO_t2i"].queries] == ["A man riding a horse.", "A dog: brown, on grass."]
    assert sub["MSCOCO_t2i"].instructions == {"candidate": "Represent the given image.", "query_prefix": T2I_PREFIX}
    vq = sub["VQA"].queries
    assert [q.text for q in vq] == ["What is on the table?", "How many dogs?"] and all(q.image for q in vq)
    assert sub["VQA"].instructions == {"query_prefix": VQA_PREFIX.removeprefix("<|image_1|>\n")}
    assert [sub["VQA"].candidates[c].text for c in vq[0].candidates] == ["cups", "books"]
    wq = sub["WebQA"].queries
    assert [q.text for q in wq] == ["Where is it?", "Who built it?"]
    assert [sub["WebQA"].candidates[c].text for c in wq[0].candidates] == ["Eiffel Tower. Paris", "Big Ben. London"]
    assert all(sub["WebQA"].candidates[c].image for c in wq[0].candidates)  # the image stays with its text
    assert sub["WebQA"].instructions["candidate_prefix"] == WEBQA_CAND.removeprefix("<|image_1|>\n")
    assert [q.text for q in sub["VisDial"].queries] == ["Q: is it a cat? A: yes", "Q: is it red? A: no"]
    kept = load_mmeb(tmp_path, ["MSCOCO_t2i", "VQA"], keep_instructions=True)
    assert kept.subsets["MSCOCO_t2i"].queries[0].text == f"{T2I_PREFIX} A man riding a horse."
    assert (
        kept.subsets["VQA"].queries[1].text == "Represent the given image with the following question: How many dogs?"
    )
    assert all(s.instructions == {} for s in kept.subsets.values())


def test_mmeb_instructions_that_end_without_a_colon_or_wrap_the_label(tmp_path: Path) -> None:
    """MMEB's instructions ending in a period or in nothing, and MSCOCO grounding's quoted label, found text by
    text from the table (two rows are enough); HatefulMemes' question is what its candidates answer: it stays."""
    crop = "<|image_1|>\nRepresent the given cropped image of the object"
    subsets = {
        "VisualNews_t2i": [
            mmeb_row(
                f"Retrieve an image of this news caption. {c}",
                "",
                ["<|image_1|>\nRepresent the given image."],
                [f"V/{n}.png"],
            )
            for n, c in (("a", "LONDON ENGLAND The Prime Minister speaks."), ("b", "Fans cheer: 2:1 at home."))
        ],
        "RefCOCO": [
            mmeb_row(
                f"<|image_1|>\nSelect the portion of the image that follows the language expressions. {e}",
                f"R/{n}.png",
                [crop],
                [f"R/c{n}.png"],
            )
            for n, e in (("a", "man in red shirt"), ("b", "left dog"))
        ],
        "Visual7W-Pointing": [
            mmeb_row(
                f"<|image_1|>\nSelect the portion of the image that answers the question {q}",
                f"P/{n}.png",
                [crop],
                [f"P/c{n}.png"],
            )
            for n, q in (("a", "Which object is red?"), ("b", "Where is the cup?"))
        ],
        "MSCOCO": [
            mmeb_row(
                f'<|image_1|>\nSelect the portion of the image that isolates the object labeled as "{w}"',
                f"M/{n}.png",
                [crop],
                [f"M/c{n}.png"],
            )
            for n, w in (("a", "dog"), ("b", "hot dog"))
        ],
        "HatefulMemes": [
            mmeb_row(
                "<|image_1|>\nRepresent the given image for binary classification to determine whether it "
                "constitutes hateful speech or not",
                f"H/{n}.png",
                ["Yes", "No"],
                ["", ""],
            )
            for n in "ab"
        ],
    }
    for name, rows in subsets.items():
        write_jsonl(tmp_path / name / "test.jsonl", rows)
        images_for(tmp_path / "eval_images", rows)
    ds = load_mmeb(tmp_path)
    assert ds.problems == []
    texts = {name: [q.text for q in sub.queries] for name, sub in ds.subsets.items()}
    assert texts == {
        "VisualNews_t2i": ["LONDON ENGLAND The Prime Minister speaks.", "Fans cheer: 2:1 at home."],
        "RefCOCO": ["man in red shirt", "left dog"],
        "Visual7W-Pointing": ["Which object is red?", "Where is the cup?"],
        "MSCOCO": ["dog", "hot dog"],
        "HatefulMemes": [
            "Represent the given image for binary classification to determine whether it constitutes hateful "
            "speech or not"
        ]
        * 2,
    }
    assert ds.subsets["MSCOCO"].instructions == {
        "query_prefix": "Select the portion of the image that isolates the object labeled as",
        "candidate": "Represent the given cropped image of the object",
    }
    assert all(c.text is None for c in ds.subsets["RefCOCO"].candidates.values())  # the cropped image alone
    assert ds.subsets["VisualNews_t2i"].instructions == {
        "query_prefix": "Retrieve an image of this news caption.",
        "candidate": "Represent the given image.",
    }
    assert ds.subsets["HatefulMemes"].instructions == {}


def test_mmeb_instructions_not_in_the_tables_are_found_by_what_the_texts_share(tmp_path: Path) -> None:
    """Wordings MMEB does not use, over MIN_SHARED (5) texts: a shared opening up to its first colon followed by a
    space (not the one inside "10:30"); a text that is only the opening stays for a text query and goes for an
    image query. A whole text every image query shares is the question asked of each image: it stays."""
    assert MIN_SHARED == 5
    head = "Note 10:30 slot, find the picture for this caption:"
    opened = [mmeb_row(f"{head} {w}", "", ["a", "b"], ["", ""]) for w in ("a red ball", "two cats", "a boat", "rain")]
    opened += [
        mmeb_row(head, "", ["a", "b"], ["", ""]),
        mmeb_row(f"<|image_1|>\n{head}", "O/a.png", ["a", "b"], ["", ""]),
    ]
    whole = [mmeb_row("<|image_1|>\nWhich of these: pick one", f"W/{n}.png", ["yes", "no"], ["", ""]) for n in "abcde"]
    three = [mmeb_row(f"Find this picture: {w}", "", ["a", "b"], ["", ""]) for w in "vwxyz"]  # 3 words are enough
    for name, rows in (("Opened", opened), ("Whole", whole), ("Three", three)):
        write_jsonl(tmp_path / name / "test.jsonl", rows)
        images_for(tmp_path / "eval_images", rows)
    ds = load_mmeb(tmp_path)
    assert [q.text for q in ds.subsets["Opened"].queries] == ["a red ball", "two cats", "a boat", "rain", head, None]
    assert ds.subsets["Opened"].instructions == {"query_prefix": head}
    assert [q.text for q in ds.subsets["Three"].queries] == list("vwxyz")
    assert [q.text for q in ds.subsets["Whole"].queries] == ["Which of these: pick one"] * 5
    assert ds.subsets["Whole"].instructions == {}
    # found over the whole file: a limit of one query still drops what the five share
    one = load_mmeb(tmp_path, ["Opened", "Whole"], limit=1)
    assert [q.text for q in one.subsets["Opened"].queries] == ["a red ball"]


def test_mmeb_shared_texts_that_are_content_are_kept(tmp_path: Path) -> None:
    """What texts share by chance is content: fewer than 5 texts, a short head (``Q:``), no colon, a colon inside
    the content ("2:1"/"2:0"), one text repeated, and identical text-only queries."""
    few = [mmeb_row(f"Find the image for this caption: {w}", "", ["a", "b"], ["", ""]) for w in "abcd"]
    short = [mmeb_row(f"Q: {w}?", "", ["a", "b"], ["", ""]) for w in ("who", "why", "how", "what", "when")]
    nocolon = [mmeb_row(f"A photo of a {w}", "", ["a", "b"], ["", ""]) for w in ("cat", "dog", "cow", "pig", "hen")]
    scores = [
        mmeb_row("<|image_1|>\nWhat was the final score?", f"S/{n}.png", [f"The final score was 2:{g}"], [""])
        for n, g in zip("abcde", "01234", strict=True)
    ]
    same = [mmeb_row("What is in the picture: a cat?", "", ["yes", "no"], ["", ""]) for _ in range(6)]
    for name, rows in (("Few", few), ("Short", short), ("NoColon", nocolon), ("Scores", scores), ("Same", same)):
        write_jsonl(tmp_path / name / "test.jsonl", rows)
        images_for(tmp_path / "eval_images", rows)
    ds = load_mmeb(tmp_path)
    assert ds.subsets["Few"].queries[0].text == "Find the image for this caption: a"
    assert [q.text for q in ds.subsets["Short"].queries][:2] == ["Q: who?", "Q: why?"]
    assert ds.subsets["NoColon"].queries[0].text == "A photo of a cat"
    sc = ds.subsets["Scores"]
    assert [sc.candidates[q.candidates[0]].text for q in sc.queries][:2] == [
        "The final score was 2:0",
        "The final score was 2:1",
    ]
    assert [q.text for q in sc.queries] == ["What was the final score?"] * 5  # a question, not an instruction
    assert [q.text for q in ds.subsets["Same"].queries] == ["What is in the picture: a cat?"] * 6
    assert all(sub.instructions == {} for sub in ds.subsets.values())


def test_mmeb_a_null_tgt_text_or_tgt_img_path_means_one_kind_of_candidate(tmp_path: Path) -> None:
    """A missing side is all-image or all-text candidates (bad inputs first: both missing, one not a list)."""
    rows = [
        mmeb_row("q1", "", None, None),  # type: ignore[arg-type]
        mmeb_row("q2", "", None, "C/a.png"),  # type: ignore[arg-type]
        mmeb_row("q3", "", 7, ["C/a.png"]),  # type: ignore[arg-type]
        mmeb_row("q4", "", None, ["C/a.png", "C/b.png"]),  # type: ignore[arg-type]
        mmeb_row("q5", "", ["red", "blue"], None),
    ]
    write_jsonl(tmp_path / "Mixed" / "test.jsonl", rows)
    images_for(tmp_path / "eval_images", [mmeb_row("", "", [], ["C/a.png", "C/b.png"])])
    ds = load_mmeb(tmp_path)
    assert [p.split(": ", 1)[0] for p in ds.problems] == [f"Mixed/test.jsonl:{n}" for n in (1, 2, 3)]
    assert "both missing" in ds.problems[0]
    assert "tgt_img_path is a str" in ds.problems[1] and "tgt_text is a int" in ds.problems[2]
    sub = ds.subsets["Mixed"]
    q4, q5 = sub.queries
    assert [(sub.candidates[c].text, Path(str(sub.candidates[c].image)).name) for c in q4.candidates] == [
        (None, "a.png"),
        (None, "b.png"),
    ]
    assert [(sub.candidates[c].text, sub.candidates[c].image) for c in q5.candidates] == [
        ("red", None),
        ("blue", None),
    ]


def test_mmeb_jsonl_with_a_bom_and_bytes_that_are_not_utf8(tmp_path: Path) -> None:
    """The JSONL reader is the retrieval loaders' one: a BOM is no problem, a non-UTF-8 text skips its row only."""
    rows = t2i_rows()
    good = [json.dumps(r).encode() for r in rows]
    bad = json.dumps(mmeb_row("Find an image: caf\udcff", "", ["x"], ["T2I/r.png"])).encode()
    bad = bad.replace(b"\\udcff", b"\xff")  # a raw byte that is not UTF-8 inside the query text
    path = tmp_path / "T2I" / "test.jsonl"
    path.parent.mkdir(parents=True)
    path.write_bytes(b"\xef\xbb\xbf" + b"\n".join([good[0], bad, good[1]]) + b"\n")
    images_for(tmp_path / "eval_images", rows)
    ds = load_mmeb(tmp_path)
    assert [q.id for q in ds.subsets["T2I"].queries] == ["0", "2"]
    assert ds.problems == ["T2I/test.jsonl:2: qry_text is not UTF-8"]


# (subset, side, text as released, has an image, the content left): MMEB-eval's wordings, one per table entry
REAL_MMEB = [
    ("ImageNet-1K", "query", "<|image_1|>\nRepresent the given image for classification", True, None),
    ("SUN397", "query", "<|image_1|>\nIdentify the scene shown in the image", True, None),
    ("ObjectNet", "query", "<|image_1|>\nIdentify the object shown in the image", True, None),
    ("Country211", "query", "<|image_1|>\nIdentify the country depicted in the image", True, None),
    ("MSCOCO_i2t", "query", "<|image_1|>\nFind an image caption describing the given everyday image.", True, None),
    ("VisualNews_i2t", "query", "<|image_1|>\nFind a caption for the news in the given photo.", True, None),
    ("NIGHTS", "query", "<|image_1|>\nFind a day-to-day image that looks similar to the provided image.", True, None),
    ("NIGHTS", "candidate", "<|image_1|>\nRepresent the given image", True, None),
    ("MSCOCO", "candidate", "<|image_1|>\nRepresent the given cropped image of the object", True, None),
    ("Wiki-SS-NQ", "candidate", "<|image_1|>\nRepresent the given document screenshot.", True, None),
    ("OK-VQA", "query", '<|image_1|>\nRepresent the given image with the following question: What does "STOP" mean?',
     True, 'What does "STOP" mean?'),
    ("N24News", "query", "<|image_1|>\nRepresent the given news image with the following caption for domain "
     "classification: Storm floods the coast", True, "Storm floods the coast"),
    ("VisDial", "query", "Represent the given dialogue about an image, which is used for image retrieval: Q: is it "
     "a dog?\nA: yes", False, "Q: is it a dog?\nA: yes"),
    ("WebQA", "candidate", "<|image_1|>\nRepresent the given Wikipedia image with related text information: Big Ben. "
     "Clock tower in London", True, "Big Ben. Clock tower in London"),
    ("EDIS", "candidate", "<|image_1|>\nRepresent the given image with related text information: Rally in Paris",
     True, "Rally in Paris"),
    ("MSCOCO_t2i", "query", "Find me an everyday image that matches the given caption: Two dogs play in snow.", False,
     "Two dogs play in snow."),
    ("FashionIQ", "query", "<|image_1|>\nFind an image to match the fashion image and style note: is darker red",
     True, "is darker red"),
    ("WebQA", "query", "Find a Wikipedia image that answers this question: How tall is Big Ben?", False,
     "How tall is Big Ben?"),
    ("EDIS", "query", "Find a news image that matches the provided caption: Rally in Paris", False, "Rally in Paris"),
    ("Wiki-SS-NQ", "query", "Find the document image that can answer the given query: who built big ben", False,
     "who built big ben"),
    ("CIRR", "query", "<|image_1|>\nGiven an image, find a similar everyday image with the described changes: "
     "make it night", True, "make it night"),
    ("VisualNews_t2i", "query", "Retrieve an image of this news caption. Fans cheer: 2:1 at home.", False,
     "Fans cheer: 2:1 at home."),
    ("OVEN", "query", "<|image_1|>\nRetrieve a Wikipedia image-description pair that provides evidence for the "
     "question of this image: What breed is this?", True, "What breed is this?"),
    ("MSCOCO", "query", '<|image_1|>\nCrop the image to to isolate the object labeled as "hot dog"', True, "hot dog"),
    ("MSCOCO-train", "query", '<|image_1|>\nSelect the portion of the image that isolates the object labeled as '
     '"a "tall" man"', True, '"a "tall" man"'),  # quotes inside: the label cannot be told apart, kept whole
    ("MMEB-paper", "query", "<|image_1|>\nSelect the portion of the image that isolates the object of the given "
     "label: red apple", True, "red apple"),
    ("RefCOCO", "query", "<|image_1|>\nSelect the portion of the image that follows the language expressions. man "
     "in red", True, "man in red"),
    ("RefCOCO-Matching", "candidate", "<|image_1|>\nSelect the portion of the image that follows the language "
     "expressions: left dog", True, "left dog"),
    ("Visual7W-Pointing", "query", "<|image_1|>\nSelect the portion of the image that answers the question Which "
     "cup is full?", True, "Which cup is full?"),
]  # fmt: skip


def test_every_mmeb_instruction_in_the_tables_leaves_the_content_of_a_real_text(tmp_path: Path) -> None:
    """One released wording per table entry (so an entry removed or mistyped fails here), each as a query or a
    candidate of one file; what is left is the content alone, quotes kept where they are content."""
    rows = []
    for n, (_, side, text, has_image, _) in enumerate(REAL_MMEB):
        img = f"R/{n}.png" if has_image else ""
        if side == "query":
            rows.append(mmeb_row(text, img, [f"answer {n}", f"other {n}"], ["", ""]))
        else:
            rows.append(mmeb_row(f"query {n}", "", [text, f"other {n}"], [img, ""]))
    write_jsonl(tmp_path / "Real" / "test.jsonl", rows)
    images_for(tmp_path / "eval_images", rows)
    ds = load_mmeb(tmp_path)
    assert ds.problems == []
    sub = ds.subsets["Real"]
    for q, (subset, side, _, _, want) in zip(sub.queries, REAL_MMEB, strict=True):
        got = q.text if side == "query" else sub.candidates[q.candidates[0]].text
        assert got == want, subset
    whole = {
        t.rstrip(" .") for t in sub.instructions["query"].split(" | ") + sub.instructions["candidate"].split(" | ")
    }
    opened = set(sub.instructions["query_prefix"].split(" | ") + sub.instructions["candidate_prefix"].split(" | "))
    assert whole == MMEB_WHOLE_INSTRUCTIONS and opened == set(MMEB_INSTRUCTION_PREFIXES)


def test_mmeb_an_item_that_is_only_an_instruction_is_reported(tmp_path: Path) -> None:
    """A text-only query or candidate whose text is only an instruction (an image path lost, say) has nothing to
    search with or for: its row is reported and skipped, not searched as the words "Represent the given image"."""
    rows = [
        mmeb_row("Find me an everyday image that matches the given caption: a cat", "", ["<|image_1|>\nRepresent the "
                 "given image."] * 2, ["T/a.png", "T/b.png"]),
        mmeb_row("Find me an everyday image that matches the given caption: a dog", "", ["<|image_1|>\nRepresent the "
                 "given image.", "<|image_1|>\nRepresent the given image."], ["T/b.png", ""]),
        mmeb_row("Find me an everyday image that matches the given caption:", "", ["x", "y"], ["", ""]),
        mmeb_row("a bird", "", ["a", "a", "b"], ["", "", ""]),  # a negative that is the positive again
    ]  # fmt: skip
    write_jsonl(tmp_path / "T" / "test.jsonl", rows)
    images_for(tmp_path / "eval_images", rows)
    ds = load_mmeb(tmp_path)
    assert ds.problems == [
        "T/test.jsonl:2: candidate 1: its text is only the instruction 'Represent the given image.' and it has "
        "no image",
        "T/test.jsonl:3: the query: its text is only the instruction 'Find me an everyday image that matches the "
        "given caption:' and it has no image",
    ]
    sub = ds.subsets["T"]
    assert [q.id for q in sub.queries] == ["0", "3"]
    assert [sub.candidates[c].text for c in sub.queries[1].candidates] == ["a", "b"]  # the positive once


# --- nothing to evaluate (issue 18 item 6) -----------------------------------------------------------------------


def test_sugarcrepe_and_mmeb_with_no_usable_question_are_one_line_errors(tmp_path: Path) -> None:
    """Files there, every image in a folder the loaders do not know: an error, not an empty run that exits 0."""
    sugar = tmp_path / "sugar"
    write_category(sugar, "add_obj", {"0": sugar_entry(0), "1": sugar_entry(1)}, images="coco-pictures")
    with pytest.raises(ConfigError) as e:
        load_sugarcrepe(sugar)
    msg = str(e.value)
    assert msg.startswith(f"sugarcrepe: nothing to evaluate in {sugar}; 8 entries skipped, first: ") and "\n" not in msg
    assert "add_obj.json: 0: image 000000000000.jpg not found in images/, val2017/" in msg
    mmeb = tmp_path / "mmeb"
    write_parquet(mmeb / "I2T" / "test-00000-of-00001.parquet", i2t_rows())
    images_for(mmeb / "pictures", i2t_rows())
    with pytest.raises(ConfigError, match=rf"^mmeb: nothing to evaluate in {mmeb}; 3 entries skipped, first: .*a\.png"):
        load_mmeb(mmeb)
