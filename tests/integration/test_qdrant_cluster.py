"""Cluster-aware collection creation, against a local HTTP server that speaks Qdrant's REST API.

What is checked is the ``PUT /collections/{name}`` body qdrant-client sends (shard_number,
replication_factor, write_consistency_factor), for a 3-peer cluster, a single node, a server that hides
``/cluster``, explicit overrides, and ``migrate`` (what ``retllm index migrate --to URL`` runs).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from retllm.errors import ConfigError
from retllm.index.base import Record
from retllm.index.edge import EdgeIndex
from retllm.index.migrate import migrate
from retllm.index.qdrant import QdrantIndex
from tests.fakes.qdrant_rest import FakeQdrant, fake_qdrant

# qdrant-client checks the server version in a background thread that may outlive a test's server.
pytestmark = pytest.mark.filterwarnings("ignore:Failed to obtain server version:UserWarning")

DIM = 8
SHARD_KEYS = {"shard_number", "replication_factor", "write_consistency_factor"}


@pytest.fixture
def cluster() -> Iterator[FakeQdrant]:
    with fake_qdrant(peers=3) as fake:
        yield fake


def test_three_peer_cluster_gets_three_shards_two_replicas(cluster: FakeQdrant) -> None:
    with QdrantIndex(cluster.url) as idx:
        idx.ensure_collection("c1", DIM)
        idx.ensure_collection("c2", DIM)
        assert idx.dim("c1") == DIM
    for name in ("c1", "c2"):
        body = cluster.created[name]
        assert body["shard_number"] == 3
        assert body["replication_factor"] == 2
        assert body["write_consistency_factor"] == 1
        assert {k: v["size"] for k, v in body["vectors"].items()} == {"image": DIM, "text": DIM, "fused": DIM}
    assert cluster.requests.count(("GET", "/cluster")) == 1  # asked once per index object, on the first create
    assert cluster.unknown == []


def test_two_peers_replicate_on_both() -> None:
    with fake_qdrant(peers=2) as fake, QdrantIndex(fake.url) as idx:
        idx.ensure_collection("c", DIM)
        assert {k: fake.created["c"][k] for k in SHARD_KEYS} == {
            "shard_number": 2,
            "replication_factor": 2,
            "write_consistency_factor": 1,
        }


@pytest.mark.parametrize("cluster_on", [False, True], ids=["cluster-disabled", "one-peer-cluster"])
def test_single_node_creates_plain(cluster_on: bool) -> None:
    with fake_qdrant(peers=1, cluster=cluster_on) as fake, QdrantIndex(fake.url) as idx:
        idx.ensure_collection("c", DIM)
        assert not SHARD_KEYS & fake.created["c"].keys()
        assert set(fake.created["c"]) == {"vectors"}
        assert ("GET", "/cluster") in fake.requests


@pytest.mark.parametrize("status", [403, 404])
def test_hidden_cluster_status_falls_back_to_plain(status: int, caplog: pytest.LogCaptureFixture) -> None:
    with fake_qdrant(peers=3, cluster_status=status) as fake, QdrantIndex(fake.url) as idx:
        with caplog.at_level(logging.DEBUG, logger="retllm.index.qdrant"):
            idx.ensure_collection("c", DIM)
            idx.ensure_collection("d", DIM)
        assert set(fake.created["c"]) == {"vectors"} and set(fake.created["d"]) == {"vectors"}
        assert fake.requests.count(("GET", "/cluster")) == 1
    assert f"no cluster status from {fake.url} ({status})" in caplog.text


@pytest.mark.filterwarnings("ignore:Api key is used with an insecure connection:UserWarning")
def test_api_key_reaches_the_cluster_call() -> None:
    with fake_qdrant(peers=3, api_key="k1") as fake, QdrantIndex(fake.url, api_key="k1") as idx:
        idx.ensure_collection("c", DIM)
        assert fake.created["c"]["shard_number"] == 3


def test_explicit_shards_and_replication_win() -> None:
    with fake_qdrant(peers=3) as fake, QdrantIndex(fake.url, shards=6, replication=3) as idx:
        idx.ensure_collection("c", DIM)
        assert (fake.created["c"]["shard_number"], fake.created["c"]["replication_factor"]) == (6, 3)
    with fake_qdrant(peers=1) as fake, QdrantIndex(fake.url, shards=4) as idx:  # several shards on one node
        idx.ensure_collection("c", DIM)
        assert (fake.created["c"]["shard_number"], fake.created["c"]["replication_factor"]) == (4, 1)


def test_local_mode_is_unchanged_and_refuses_shard_options(tmp_path: Path) -> None:
    idx = QdrantIndex(":memory:")
    try:
        assert idx.sharding() == {}
        idx.ensure_collection("c", DIM)
        assert idx.dim("c") == DIM
    finally:
        idx.close()
    with pytest.raises(ConfigError, match="shards=2: needs a Qdrant server URL"):
        QdrantIndex(str(tmp_path / "q"), shards=2)
    with pytest.raises(ConfigError, match="replication=0"):
        QdrantIndex("http://127.0.0.1:1", replication=0)


def test_migrate_to_cluster_creates_sharded_collection(tmp_path: Path, cluster: FakeQdrant) -> None:
    rng = np.random.default_rng(0)
    recs = [
        Record(f"item-{i}", {"image": rng.standard_normal(DIM).astype(np.float32)}, {"retllm_id": f"item-{i}"})
        for i in range(5)
    ]
    with EdgeIndex(tmp_path / "edge") as src, QdrantIndex(cluster.url) as dst:
        src.ensure_collection("photos", DIM)
        src.upsert("photos", recs)
        assert migrate(src, dst, "photos", batch=2) == 5
    assert cluster.created["photos"]["shard_number"] == 3
    assert cluster.created["photos"]["replication_factor"] == 2
    assert len(cluster.points["photos"]) == 5
    assert cluster.unknown == []
