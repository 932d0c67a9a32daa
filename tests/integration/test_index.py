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


def test_auto_search_keeps_each_items_best_vector(index: Index) -> None:
    index.ensure_collection("c", DIM)
    index.upsert("c", records())
    hits = index.search("c", {"text": unit([0, 0, 1])}, limit=4)
    ids = [h.id for h in hits]
    assert ids[0] == "both-d" and hits[0].vector == "text"
    assert len(ids) == len(set(ids)) == 4
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


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
