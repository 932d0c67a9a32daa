"""One suite, run against every index backend (embedded qdrant-edge, qdrant-client local mode)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retllm.errors import CollectionNotFoundError, ConfigError, DimensionMismatchError
from retllm.index.base import Index, Record
from retllm.index.edge import EdgeIndex
from retllm.index.migrate import migrate
from retllm.index.qdrant import QdrantIndex
from tests.threads import run_threads

DIM = 8


@pytest.fixture(params=["edge", "qdrant-memory", "qdrant-path"])
def index(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Index]:
    idx: Index
    if request.param == "edge":
        idx = EdgeIndex(tmp_path / "edge")
    elif request.param == "qdrant-memory":
        idx = QdrantIndex(":memory:")
    else:
        idx = QdrantIndex(str(tmp_path / "qdrant"))
    yield idx
    idx.close()


def unit(v: list[float]) -> np.ndarray:
    a = np.asarray(v + [0.0] * (DIM - len(v)), np.float32)
    return a / np.linalg.norm(a)


def records() -> list[Record]:
    return [
        Record(
            "img-a",
            {"image": unit([1, 0])},
            {"retllm_id": "img-a", "text": None, "image": "a.png", "meta": {"colour": "red", "n": 1}},
        ),
        Record(
            "img-b",
            {"image": unit([0, 1])},
            {"retllm_id": "img-b", "text": None, "image": "b.png", "meta": {"colour": "blue", "n": 2}},
        ),
        Record(
            "txt-c",
            {"text": unit([1, 0.2])},
            {"retllm_id": "txt-c", "text": "c", "image": None, "meta": {"colour": "red", "n": "1"}},
        ),
        Record(
            "both-d",
            {"image": unit([0.3, 1]), "text": unit([0, 0, 1]), "fused": unit([0.3, 1, 1])},
            {"retllm_id": "both-d", "text": "d", "image": "d.png", "meta": {"colour": "green"}},
        ),
    ]


def test_create_upsert_count_and_dim(index: Index) -> None:
    assert index.list_collections() == []
    index.ensure_collection("c1", DIM)
    assert index.exists("c1") and index.dim("c1") == DIM
    index.upsert("c1", records())
    assert index.count("c1") == 4
    index.upsert("c1", records())  # same ids: replaced, not added
    assert index.count("c1") == 4


def test_dimension_mismatch_and_unknown_collection(index: Index) -> None:
    index.ensure_collection("c1", DIM)
    with pytest.raises(DimensionMismatchError, match="holds 8-d vectors but the embedder makes 16-d"):
        index.ensure_collection("c1", 16)
    with pytest.raises(CollectionNotFoundError, match="no collection 'nope'"):
        index.count("nope")
    with pytest.raises(ConfigError, match="invalid collection name"):
        index.ensure_collection("../evil", DIM)


def test_search_by_named_vector(index: Index) -> None:
    index.ensure_collection("c", DIM)
    index.upsert("c", records())
    hits = index.search("c", {"text": unit([1, 0])}, limit=2, using="image")
    assert [h.id for h in hits] == ["img-a", "both-d"]
    assert hits[0].score == pytest.approx(1.0, abs=1e-5)
    assert all(h.vector == "image" for h in hits)
    hits = index.search("c", {"text": unit([1, 0])}, limit=10, using="text")
    assert [h.id for h in hits] == ["txt-c", "both-d"]


def test_optimize_keeps_points_and_answers(index: Index) -> None:
    index.ensure_collection("c", DIM)
    index.upsert("c", records())
    before = [(h.id, round(h.score, 5)) for h in index.search("c", {"image": unit([1, 0.5])}, limit=4)]
    assert index.optimize("c") is isinstance(index, EdgeIndex)  # a Qdrant server/local mode needs no call
    assert index.count("c") == 4
    assert [(h.id, round(h.score, 5)) for h in index.search("c", {"image": unit([1, 0.5])}, limit=4)] == before
    index.upsert("c", records()[:1])  # still writable afterwards
    assert index.count("c") == 4
    with pytest.raises(CollectionNotFoundError, match="no collection 'nope'"):
        index.optimize("nope")


def mixed_collection() -> list[Record]:
    """Text-only items close to the query text (cosine ~0.7, as CLIP text-text), the right image-only item far
    below them (cosine 0.35, as CLIP text-image), another image-only item, and one item with all three kinds."""
    recs = [
        Record(f"t{i}", {"text": unit([0.75 - i / 100] + [0.0] * i + [0.66])}, {"retllm_id": f"t{i}"}) for i in range(5)
    ]
    recs.append(Record("photo", {"image": unit([0.35, 0, 0, 0, 0, 0, 0, 0.94])}, {"retllm_id": "photo"}))
    recs.append(Record("other", {"image": unit([0.2, 0, 0, 0, 0, 0, 0.98])}, {"retllm_id": "other"}))
    both = {"image": unit([0.1, 0, 0, 0, 0, 1]), "text": unit([0.1, 0, 0, 0, 1]), "fused": unit([0.1, 0, 0, 0, 1, 1])}
    recs.append(Record("both", both, {"retllm_id": "both"}))
    return recs


def naive_fused(recs: list[Record], q: np.ndarray, limit: int) -> list[tuple[str, float]]:
    """Reciprocal rank fusion written out: exact top-``2 * limit`` per named vector (the depth search asks
    for), sum of 1 / (2 + rank), best ``limit``."""
    total: dict[str, float] = {}
    for name in ("image", "text", "fused"):
        ranked = sorted((r for r in recs if name in r.vectors), key=lambda r: -float(r.vectors[name] @ q))[: 2 * limit]
        for rank, r in enumerate(ranked):
            total[r.id] = total.get(r.id, 0.0) + 1.0 / (2 + rank)
    return sorted(total.items(), key=lambda kv: -kv[1])[:limit]


@pytest.mark.parametrize("fusion", ["rank", "rrf", "dbsf"])
def test_auto_search_fuses_the_vector_kinds_so_image_only_items_are_reachable(index: Index, fusion: str) -> None:
    index.ensure_collection("c", DIM)
    recs = mixed_collection()
    index.upsert("c", recs)
    q = {"text": unit([1.0])}
    text_only = [h.id for h in index.search("c", q, limit=3, using="text")]
    assert "photo" not in text_only  # what a best-cosine merge of the three searches returned as well
    index.fusion = fusion  # type: ignore[assignment]
    hits = index.search("c", q, limit=3)
    assert "photo" in [h.id for h in hits] and "other" not in [h.id for h in hits]
    assert len({h.id for h in hits}) == 3
    if fusion == "rank":  # each item at its best rank; it keeps that kind's name and cosine
        # The best of each kind: "both" (the only fused vector) first, as more searches found it; then by id.
        assert [h.id for h in hits] == ["both", "photo", "t0"]
        assert [h.vector for h in hits] == ["fused", "image", "text"]
        assert hits[1].score == pytest.approx(0.35 / np.linalg.norm([0.35, 0.94]), abs=1e-5)
    else:
        assert all(h.vector == fusion for h in hits)
        assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)
    if fusion == "rrf":
        want = naive_fused(recs, q["text"], 3)
        assert {h.id for h in hits} == {i for i, _ in want}
        assert sorted(h.score for h in hits) == pytest.approx(sorted(s for _, s in want), abs=1e-6)
    filtered = index.search("c", q, limit=3, flt={"colour": "red"})
    assert filtered == []  # the filter reaches every kind's search


def test_a_perfect_single_kind_match_is_not_outvoted_by_items_with_more_kinds(index: Index) -> None:
    """Summing over the kinds (RRF) lets mediocre image+text items, found by all three searches, push a
    perfect image-only match out of the pool; best-rank fusion (the default) keeps it."""
    index.ensure_collection("c", DIM)
    recs = [Record("perfect", {"image": unit([1.0])}, {"retllm_id": "perfect"})]
    for i in range(6):
        v = unit([0.45 - i / 50, 0, 0, 0.5 + i / 10, 1])
        recs.append(Record(f"both{i}", {"image": v, "text": v, "fused": v}, {"retllm_id": f"both{i}"}))
    index.upsert("c", recs)
    q = {"image": unit([1.0])}
    assert index.search("c", q, limit=1, using="image")[0].id == "perfect"
    index.fusion = "rrf"  # type: ignore[assignment]
    assert "perfect" not in [h.id for h in index.search("c", q, limit=4)]
    index.fusion = "rank"  # type: ignore[assignment]
    hits = index.search("c", q, limit=4)
    assert "perfect" in [h.id for h in hits[:2]] and next(h for h in hits if h.id == "perfect").vector == "image"


def test_auto_search_is_the_same_on_every_backend(tmp_path: Path) -> None:
    """qdrant-edge and qdrant-client run the same Query API request: same ids, same fused scores."""
    for fusion in ("rank", "rrf", "dbsf"):
        got = []
        for idx in (EdgeIndex(tmp_path / fusion, fusion=fusion), QdrantIndex(":memory:", fusion=fusion)):  # type: ignore[arg-type]
            idx.ensure_collection("c", DIM)
            idx.upsert("c", mixed_collection() + records())
            hits = idx.search("c", {"image": unit([0.5, 0.4, 0.3, 0.2])}, limit=6)
            got.append([(h.id, h.vector, round(h.score, 5)) for h in hits])
            idx.close()
        assert got[0] == got[1] and len(got[0]) == 6, fusion


def test_payload_filters(index: Index) -> None:
    index.ensure_collection("c", DIM)
    index.upsert("c", records())
    hits = index.search("c", {"image": unit([0, 1])}, limit=10, using="image", flt={"colour": "red"})
    assert [h.id for h in hits] == ["img-a"]
    assert index.count("c", {"colour": "red"}) == 2
    # A CLI value "1" matches both the string "1" and the integer 1.
    assert index.count("c", {"n": "1"}) == 2
    assert index.count("c", {"colour": "red", "n": 1}) == 1  # a typed value matches only its type
    assert index.count("c", {"colour": "purple"}) == 0


def test_delete_existing_and_scroll(index: Index) -> None:
    index.ensure_collection("c", DIM)
    index.upsert("c", records())
    assert index.existing("c", ["img-a", "zzz"]) == {"img-a"}
    assert index.delete("c", ["img-a", "zzz"]) == 1
    assert index.count("c") == 3
    got = {r.id: r for r in index.scroll("c", with_vectors=True, batch=2)}
    assert set(got) == {"img-b", "txt-c", "both-d"}
    assert set(got["both-d"].vectors) == {"image", "text", "fused"}
    np.testing.assert_allclose(got["both-d"].vectors["fused"], unit([0.3, 1, 1]), atol=1e-6)
    assert got["img-b"].payload["meta"] == {"colour": "blue", "n": 2}


def test_drop_collection(index: Index) -> None:
    index.ensure_collection("c", DIM)
    index.drop_collection("c")
    assert not index.exists("c")


def test_migrate_edge_to_client_local_mode(tmp_path: Path) -> None:
    src = EdgeIndex(tmp_path / "edge")
    src.ensure_collection("c", DIM)
    rng = np.random.default_rng(0)
    recs = [
        Record(
            f"id{i}", {"image": rng.standard_normal(DIM).astype(np.float32)}, {"retllm_id": f"id{i}", "meta": {"i": i}}
        )
        for i in range(600)
    ]
    src.upsert("c", recs)
    dst = QdrantIndex(str(tmp_path / "dst"))
    assert migrate(src, dst, "c", batch=128) == 600
    assert dst.count("c") == 600 and dst.dim("c") == DIM
    q = {"image": recs[5].vectors["image"]}
    assert [h.id for h in src.search("c", q, limit=5)] == [h.id for h in dst.search("c", q, limit=5)]
    src.close()
    dst.close()


# --- shared use from many threads -----------------------------------------------------------------


@pytest.mark.parametrize("backend", ["edge", "qdrant-path"])
def test_concurrent_first_opens_of_one_collection_succeed(tmp_path: Path, backend: str) -> None:
    """Threads of one process opening the same embedded collection (own instances and a shared one) all work."""

    def make() -> Index:
        return EdgeIndex(tmp_path / "e") if backend == "edge" else QdrantIndex(str(tmp_path / "q"))

    first = make()
    first.ensure_collection("c", DIM)
    first.upsert("c", records())
    first.close()
    shared = make()
    counts: list[int] = []

    def open_and_read(i: int) -> None:
        idx = shared if i % 2 else make()
        counts.append(idx.count("c"))
        assert [h.id for h in idx.search("c", {"image": unit([1, 0])}, limit=1, using="image")] == ["img-a"]
        if idx is not shared:
            idx.close()

    assert run_threads(open_and_read, 8) == []
    assert counts == [4] * 8
    shared.close()
    reopened = make()  # every reference was released: the store opens again
    assert reopened.count("c") == 4
    reopened.close()


def test_concurrent_creates_of_one_collection_succeed(index: Index) -> None:
    assert run_threads(lambda i: index.ensure_collection("c", DIM), 6) == []
    assert index.list_collections() == ["c"]


def test_concurrent_writes_and_searches_on_a_shared_index(index: Index) -> None:
    """Local mode corrupts its arrays under concurrent use unless calls are serialised; edge is safe as is."""
    index.ensure_collection("c", DIM)
    rng = np.random.default_rng(0)
    vecs = rng.standard_normal((4, 50, DIM)).astype(np.float32)

    def work(i: int) -> None:
        if i < 4:
            for j in range(0, 50, 5):
                batch = [
                    Record(f"w{i}-{j + n}", {"image": vecs[i, j + n]}, {"retllm_id": f"w{i}-{j + n}"}) for n in range(5)
                ]
                index.upsert("c", batch)
        else:
            for j in range(30):
                index.search("c", {"image": vecs[i - 4, j]}, limit=5)
                index.count("c")

    assert run_threads(work, 8) == []
    assert index.count("c") == 200


def test_a_collection_dropped_by_one_instance_is_gone_for_another(tmp_path: Path) -> None:
    a, b = EdgeIndex(tmp_path), EdgeIndex(tmp_path)
    a.ensure_collection("c", DIM)
    a.upsert("c", records())
    assert b.count("c") == 4  # b shares a's open shard instead of failing on its lock
    a.drop_collection("c")
    with pytest.raises(CollectionNotFoundError):
        b.count("c")
    b.ensure_collection("c", DIM)  # and can create it anew
    assert a.count("c") == 0
    a.close()
    b.close()


def test_closing_twice_leaves_other_instances_of_a_local_store_working(tmp_path: Path) -> None:
    a, b = QdrantIndex(str(tmp_path)), QdrantIndex(str(tmp_path))
    a.ensure_collection("c", DIM)
    a.close()
    a.close()
    assert b.count("c") == 0
    b.close()
    c = QdrantIndex(str(tmp_path))  # the store opens again once every instance closed
    assert c.exists("c")
    c.close()


def test_a_collection_recreated_under_another_instance_is_counted_for_both(tmp_path: Path) -> None:
    a, b = EdgeIndex(tmp_path), EdgeIndex(tmp_path)
    a.ensure_collection("c", DIM)
    assert b.count("c") == 0  # b holds the first shard
    a.drop_collection("c")
    a.ensure_collection("c", DIM)
    a.upsert("c", records())
    assert b.count("c") == 4  # b now holds the new shard, counted
    b.close()
    assert a.count("c") == 4  # b's close did not close a's shard
    a.upsert("c", records()[:1])
    a.close()


def test_rank_fusion_does_not_depend_on_the_engines_order_of_equal_cosines(tmp_path: Path) -> None:
    """One photo stored under five ids (five captions) ties in the image ranking: which of them make the pool,
    and their order, are decided by id, the same on every backend and for any insertion order."""
    photo = unit([1.0, 0.2])
    recs = [Record(f"photo#cap{i}", {"image": photo}, {"retllm_id": f"photo#cap{i}"}) for i in range(5)]
    recs += [Record(f"t{i}", {"text": unit([0.9, 0.1 * i, 1])}, {"retllm_id": f"t{i}"}) for i in range(4)]
    got = []
    for name, idx, order in [
        ("edge", EdgeIndex(tmp_path / "a"), recs),
        ("edge, reversed", EdgeIndex(tmp_path / "b"), recs[::-1]),
        ("qdrant", QdrantIndex(":memory:"), recs[::-1]),
    ]:
        idx.ensure_collection("c", DIM)
        for r in order:
            idx.upsert("c", [r])
        got.append((name, [h.id for h in idx.search("c", {"image": unit([1.0])}, limit=3)]))
        idx.close()
    assert got[0][1] == got[1][1] == got[2][1], got
    assert got[0][1] == ["photo#cap0", "photo#cap1", "photo#cap2"]  # equal cosines share rank 0: ties by id


def test_a_shard_in_use_survives_another_instance_closing(tmp_path: Path) -> None:
    """b held the shard from before a drop and re-create by a: closing b must not close a's shard mid-scroll."""
    a, b = EdgeIndex(tmp_path), EdgeIndex(tmp_path)
    a.ensure_collection("c", DIM)
    assert b.count("c") == 0
    a.drop_collection("c")
    a.ensure_collection("c", DIM)
    a.upsert("c", records())
    b.count("c")  # b picks up the new shard
    pages = a.scroll("c", batch=1)
    first = next(pages)
    b.close()
    assert len([first, *pages]) == 4
    a.close()
