"""A collection poisoned the way one request could leave it (tests/poisoned.py) never takes the others down:
it is listed as broken with the reason and the repair, its good items can be exported, and `retllm index
repair` gets them back; and the index itself refuses to write what the store cannot read back."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from retllm.errors import BadItemError, CollectionBrokenError
from retllm.index.base import Record
from retllm.index.edge import EdgeIndex
from tests.e2e.cli import run
from tests.poisoned import poison


def nest(n: int) -> dict[str, object]:
    v: dict[str, object] = {"a": 1}
    for _ in range(n - 1):
        v = {"a": v}
    return v


def test_the_index_refuses_a_record_the_store_cannot_read_back_and_writes_nothing(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path)
    index.ensure_collection("c", 4)
    v = np.ones(4, np.float32)
    index.upsert("c", [Record("ok", {"image": v}, {"retllm_id": "ok", "meta": {}})])
    batch = [
        Record("fine", {"image": v}, {"retllm_id": "fine", "meta": {"n": 1}}),
        Record("deep", {"image": v}, {"retllm_id": "deep", "meta": nest(130)}),
    ]
    with pytest.raises(BadItemError, match="item 'deep': stored payload is nested more than"):
        index.upsert("c", batch)
    with pytest.raises(BadItemError, match="item 'big': stored payload: the integer"):
        index.upsert("c", [Record("big", {"image": v}, {"retllm_id": "big", "meta": {"i": 2**64}})])
    index.close()
    again = EdgeIndex(tmp_path)  # as after a restart: it opens, and the refused batch left nothing
    assert sorted(r.id for r in again.scroll("c")) == ["ok"]
    again.close()


@pytest.mark.slow  # eight CLI runs each; the fast tests below cover the same paths in-process
@pytest.mark.parametrize("kill", [False, True], ids=["closed", "killed-before-flush"])
def test_a_poisoned_collection_is_listed_broken_exported_and_repaired(cli_env, embedder, tmp_path, kill) -> None:
    edge = Path(cli_env["RETLLM_DATA_DIR"]) / "edge"
    good = poison(edge, "poisoned", embedder.dim, kill=kill)
    poison(edge, "healthy", embedder.dim, depth=3)  # its odd item is small enough: nothing wrong with it

    r = run(["index", "stats", "--json"], cli_env)
    assert r.returncode == 0, r.stderr
    rows = {c["collection"]: c for c in json.loads(r.stdout)["collections"]}
    assert rows["healthy"]["points"] == 4 and rows["healthy"]["broken"] is None
    if kill:  # the write-ahead log cannot be replayed: the shard does not open at all
        assert rows["poisoned"]["points"] is None
        assert "cannot be opened" in rows["poisoned"]["broken"] and "retllm index repair -c poisoned" in r.stderr
    r = run(["search", "item", "-c", "poisoned", "--coarse-only", "-k", "10"], cli_env)
    assert r.returncode == 1 and r.stderr.count("\n") == 1 and "retllm index repair -c poisoned" in r.stderr

    out = tmp_path / "export.jsonl"
    r = run(["index", "export", "-c", "poisoned", "--out", str(out)], cli_env)
    assert r.returncode == 0, r.stderr
    assert sorted(json.loads(line)["id"] for line in out.read_text().splitlines()) == good
    assert "left out 'bad'" in r.stderr and "exported 3 items" in r.stderr

    r = run(["index", "repair", "-c", "poisoned"], cli_env)
    assert r.returncode == 0, r.stderr
    assert "kept 3 items, left out 1" in r.stdout and "left out 'bad'" in r.stderr
    backups = list((edge / ".backups").iterdir())
    assert len(backups) == 1 and backups[0].name.startswith("poisoned-")

    r = run(["index", "stats", "--json"], cli_env)
    rows = {c["collection"]: c for c in json.loads(r.stdout)["collections"]}
    assert set(rows) == {"healthy", "poisoned"}  # the backup and the work folder are not collections
    assert rows["poisoned"]["points"] == 3 and rows["poisoned"]["broken"] is None
    r = run(["search", "item", "-c", "poisoned", "--coarse-only", "-k", "10", "--json"], cli_env)
    assert r.returncode == 0, r.stderr
    assert sorted(h["id"] for h in json.loads(r.stdout)) == good
    r = run(["index", "repair", "-c", "poisoned"], cli_env)
    assert r.returncode == 0 and "nothing to repair" in r.stdout


def test_repair_keeps_every_item_of_a_healthy_collection_and_its_vectors(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path)
    index.ensure_collection("c", 4)
    rng = np.random.default_rng(1)
    recs = [
        Record(
            f"i{i}",
            {"image": (v := rng.normal(size=4).astype(np.float32)) / np.linalg.norm(v)},
            {"retllm_id": f"i{i}", "meta": {"n": i, "tags": ["a", "b"]}},
        )
        for i in range(300)  # more than one scroll page
    ]
    index.upsert("c", recs)
    report = index.repair("c")
    assert report.kept == 300 and report.dropped == [] and report.backup is None
    got = {r.id: r for r in index.scroll("c", with_vectors=True)}
    assert set(got) == {r.id for r in recs}
    for r in recs:
        assert got[r.id].payload == r.payload
        np.testing.assert_allclose(got[r.id].vectors["image"], r.vectors["image"], atol=1e-6)
    index.close()


def test_the_store_engine_cannot_read_back_what_it_accepted(tmp_path: Path) -> None:
    """The engine's own limit, without retllm (docs/reliability.md: the reproduction for upstream): this test
    fails, and the page must change, the day qdrant-edge reads its log back or refuses the write."""
    import uuid

    import qdrant_edge as q

    def attempt(depth: int) -> str:
        folder = tmp_path / f"d{depth}"
        shard = q.EdgeShard.create(
            str(folder), q.EdgeConfig(vectors={"v": q.EdgeVectorParams(size=2, distance=q.Distance.Cosine)})
        )
        shard.update(
            q.UpdateOperation.upsert_points([q.Point(str(uuid.uuid4()), {"v": [1.0, 0.0]}, {"x": nest(depth)})])
        )
        shard.close()  # the process could as well be killed here: the log is what is replayed
        try:
            q.EdgeShard.load(str(folder)).close()
            return "opens"
        except Exception as e:
            return str(e)

    assert attempt(120) == "opens"
    assert "RecursionLimitExceeded" in attempt(140)


def test_a_broken_collection_fails_fast_and_heals_when_repaired_by_another_process(cli_env, embedder) -> None:
    edge = Path(cli_env["RETLLM_DATA_DIR"]) / "edge"
    poison(edge, "p", embedder.dim, kill=True)
    index = EdgeIndex(edge)
    with pytest.raises(CollectionBrokenError, match="cannot be opened") as first:
        index.count("p")
    assert index.broken("p") == str(first.value)  # the second answer is the remembered one
    r = run(["index", "repair", "-c", "p"], cli_env)
    assert r.returncode == 0, r.stderr
    assert index.broken("p") is None and index.count("p") == 3  # a new folder: the old answer is forgotten
    index.close()


def test_an_item_the_store_cannot_read_back_breaks_reads_not_the_process_until_repaired(cli_env, embedder) -> None:
    edge = Path(cli_env["RETLLM_DATA_DIR"]) / "edge"
    good = poison(edge, "p", embedder.dim)  # closed cleanly: it opens, but one payload does not read back
    index = EdgeIndex(edge)
    assert index.count("p") == 4 and index.broken("p") is None  # nothing tells until the item is read
    with pytest.raises(CollectionBrokenError, match="holds an item the store cannot read back"):
        index.count("p", {"n": 0})  # a filter reads payloads: the engine panics (a BaseException), not a 500
    with pytest.raises(CollectionBrokenError, match="^collection 'p' holds an item the store cannot read back \\("):
        index.search("p", {"text": np.ones(embedder.dim, np.float32)}, limit=10, flt={"n": 0})
    assert "retllm index repair -c p" in (index.broken("p") or "")  # now listed as broken...
    rec = Record("new", {"text": np.ones(embedder.dim, np.float32)}, {"retllm_id": "new", "meta": {}})
    with pytest.raises(CollectionBrokenError):
        index.upsert("p", [rec])  # ...writes are refused...
    skipped: list[tuple[str, str]] = []
    assert sorted(r.id for r in index.salvage("p", lambda what, why: skipped.append((what, why)))) == good
    assert [w for w, _ in skipped] == ["'bad'"]
    r = run(["index", "repair", "-c", "p"], cli_env)  # ...and its lock is free for a repair by another process
    assert r.returncode == 0 and "kept 3 items, left out 1" in r.stdout, r.stderr
    hits = index.search("p", {"text": np.ones(embedder.dim, np.float32)}, limit=10)
    assert sorted(h.id for h in hits) == good
    index.close()


def test_an_item_that_bypassed_its_checks_is_skipped_and_the_rest_of_its_batch_stored(tmp_path, embedder) -> None:
    from retllm.ingest import Ingestor
    from retllm.types import Item

    index = EdgeIndex(tmp_path / "edge")
    sneaked = Item(id="deep", text="x").model_copy(update={"payload": nest(110)})  # model_copy skips validation
    report = Ingestor(embedder, index, "c").add([Item(id="a", text="one"), sneaked, Item(id="b", text="two")])
    assert report.added == 2 and [w for w, _ in report.skipped] == ["deep"] and "deep" not in report.ids.values()
    assert "nested more than 100 levels deep" in report.skipped[0][1]
    index.close()
    again = EdgeIndex(tmp_path / "edge")
    assert sorted(r.id for r in again.scroll("c")) == ["a", "b"]
    again.close()


def test_repair_keeps_items_the_store_reads_back_even_outside_todays_input_bounds(tmp_path: Path) -> None:
    index = EdgeIndex(tmp_path)
    index.ensure_collection("c", 4)
    v = np.ones(4, np.float32)
    old = [
        Record("deep20", {"image": v}, {"retllm_id": "deep20", "meta": nest(20)}),
        Record("keys", {"image": v}, {"retllm_id": "keys", "meta": {f"k{i}": i for i in range(2000)}}),
    ]
    index.upsert("c", old)  # what an older version let in: the store reads it back whole
    report = index.repair("c")
    assert (report.kept, report.dropped, report.backup) == (2, [], None)
    skipped: list[tuple[str, str]] = []
    assert sorted(r.id for r in index.salvage("c", lambda *a: skipped.append(a))) == ["deep20", "keys"] and not skipped
    index.close()


def test_a_repair_cleans_what_a_killed_repair_left_and_spares_a_running_ones(tmp_path: Path, embedder) -> None:
    import os

    poison(tmp_path, "p", embedder.dim, kill=True)
    dead = 2**22 + 12345  # above the kernel's pid range: no such process
    left = [tmp_path / f".repair-p-20260101-000000-{dead}", tmp_path / f".salvage-p-20260101-000000-abc-{dead}"]
    alive = tmp_path / f".repair-p-20260101-000000-{os.getpid()}"
    other = tmp_path / f".repair-px-20260101-000000-{dead}"
    for d in [*left, alive, other]:
        d.mkdir()
    index = EdgeIndex(tmp_path)
    assert index.repair("p").kept == 3
    assert not any(d.exists() for d in left) and alive.exists() and other.exists()
    assert [c for c in index.list_collections()] == ["p"]
    assert [p.name for p in tmp_path.glob(".salvage-*")] == []  # this repair's own copy is gone too
    index.close()


def _wal_segment(path: Path, ops: list[dict[str, object]], seed: int = 0x1234ABCD) -> None:
    """A WAL segment file as the `wal` crate writes one (docs/reliability.md), holding ``ops`` as CBOR."""
    import struct

    import cbor2
    import crc32c

    def rev(x: int) -> int:
        return int(f"{x:032b}"[::-1], 2)

    out, crc = bytearray(b"wal\x00" + struct.pack("<I", seed)), seed
    for op in ops:
        data = cbor2.dumps(op)
        body = struct.pack("<Q", len(data)) + data + b"\x00" * ((4 - len(data)) & 7)
        crc = crc32c.crc32c(body, value=rev(crc) ^ 0xFFFFFFFF)
        out += body + struct.pack("<I", crc)
    path.write_bytes(bytes(out) + b"\x00" * 64)


def test_the_log_is_replayed_in_the_engines_order_closed_segments_first(tmp_path: Path) -> None:
    """The suite's stores never fill a 32 MiB log segment, so the order of closed and open segments was
    untested: replayed open-first, a deleted item came back and an updated one went back to its old text."""
    import uuid

    from retllm.index.edge_repair import salvage
    from retllm.types import point_id

    index = EdgeIndex(tmp_path)
    index.ensure_collection("c", 4)
    index.close()

    def up(item: str, text: str) -> dict[str, object]:
        pid = uuid.UUID(point_id(item)).bytes
        payload = {"retllm_id": item, "text": text, "meta": {}}
        return {
            "upsert_points": {"points": [{"id": pid, "vector": {"image": [1.0, 0.0, 0.0, 0.0]}, "payload": payload}]}
        }

    wal = tmp_path / "c" / "wal"
    for f in wal.iterdir():
        f.unlink()
    _wal_segment(wal / "closed-0", [up("a", "old"), up("b", "kept"), up("gone", "x")])
    _wal_segment(wal / "closed-3", [up("a", "new")])
    _wal_segment(wal / "open-1", [{"delete_points": {"ids": [point_id("gone")]}}, up("c", "last")])
    got = {r.id: r.payload["text"] for r in salvage(tmp_path / "c", lambda *a: None)}
    assert got == {"a": "new", "b": "kept", "c": "last"}
