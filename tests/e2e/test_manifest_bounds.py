"""`retllm index add` keeps the good rows of a manifest and names each bad one: JSON nested past any parser
or the store, integers of thousands of digits, CSV fields past the csv module's limit, file names that are
not UTF-8. One bad row never fails the upload, and the collection opens afterwards."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

from tests.e2e.cli import run


def test_a_manifest_keeps_its_good_rows_and_names_every_bad_one(cli_env, tmp_path: Path) -> None:
    jsonl = tmp_path / "items.jsonl"
    deep = '{"a":' * 100_000 + "1" + "}" * 100_000
    rows = [
        json.dumps({"id": "j-ok-1", "text": "first good row", "kind": "a"}),
        '{"id": "j-recursion", "text": "x", "meta": ' + deep + "}",  # json.loads: RecursionError
        '{"id": "j-digits", "text": "x", "n": ' + "9" * 5000 + "}",  # json.loads: int_max_str_digits
        json.dumps({"id": "j-deep", "text": "x", "m": json.loads('{"a":' * 130 + "1" + "}" * 130)}),
        json.dumps({"id": "j-huge", "text": "x", "n": 2**80}),
        '{"id": "j-surrogate", "text": "\\udc80"}',
        json.dumps({"id": "j-ok-2", "text": "second good row"}),
    ]
    jsonl.write_text("\n".join(rows) + "\n")
    table = tmp_path / "items.csv"
    with table.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["id", "text", "note"])
        w.writerow(["c-ok-1", "a good csv row", "n"])
        w.writerow(["c-long", "x", "y" * 200_000])  # past csv.field_size_limit() (128 KiB)
        w.writerow(["c-ok-2", "another good csv row", "n"])
    folder = tmp_path / "texts"
    folder.mkdir()
    (folder / "fine.txt").write_text("a text file")
    (folder / os.fsdecode(b"bad-\xff.txt")).write_bytes(b"a badly named file")  # a name that is not UTF-8

    r = run(["index", "add", str(jsonl), str(table), str(folder)], cli_env)
    assert r.returncode == 0, r.stderr
    assert "added 5," in r.stderr and "skipped 7" in r.stderr, r.stderr
    lines = r.stderr.splitlines()
    want = {
        f"{jsonl}:2": "nested too deeply",
        f"{jsonl}:3": "Exceeds the limit",
        f"{jsonl}:4": "nested more than 16 levels deep",
        f"{jsonl}:5": "does not fit in 64 bits",
        f"{jsonl}:6": "not valid Unicode",
        f"{table}:3": "field larger than field limit",
        f"{folder}/bad-": "the file name is not valid Unicode",
    }
    for origin, words in want.items():
        assert any(f"skipped {origin}" in line and words in line for line in lines), (origin, r.stderr)

    from retllm.index.edge import EdgeIndex

    index = EdgeIndex(Path(cli_env["RETLLM_DATA_DIR"]) / "edge")  # the store opens, holding the good rows only
    try:
        stored = {r.payload["text"] for r in index.scroll("default")}
    finally:
        index.close()
    assert stored == {"first good row", "second good row", "a good csv row", "another good csv row", "a text file"}
    r = run(["search", "x", "--coarse-only", "--filter", "../text=x"], cli_env)
    assert r.returncode == 1 and r.stderr.startswith("error: filter key '../text'") and r.stderr.count("\n") == 1
