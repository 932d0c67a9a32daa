"""The retrieval pipeline end to end in-process: tiny CLIP, embedded qdrant-edge, tiny Qwen2-VL scorer."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pytest

from retllm.errors import BadItemError
from retllm.images import ImageLimits
from retllm.index.edge import EdgeIndex
from retllm.ingest import Ingestor
from retllm.pipeline import Retriever
from retllm.scorers.base import Candidate, Score, Scorer
from retllm.scorers.hf import HFScorer
from retllm.types import Item, Query
from tests.fakes.http_files import serve_folder


class _Recording(Scorer):
    """A real Scorer subclass that records the queries it is given and scores by coarse score."""

    def __init__(self, urls: bool) -> None:
        self.urls = urls
        self.seen: list[Query] = []

    @property
    def prefers_urls(self) -> bool:
        return self.urls

    def score(self, query: Query, candidates: Sequence[Candidate]) -> list[Score]:
        self.seen.append(query)
        return [Score(value=c.coarse_score, entropy=1.0, method="logits") for c in candidates]


@pytest.fixture
def filled(tmp_path: Path, embedder, candidate_images: list[Path]):  # type: ignore[no-untyped-def]
    index = EdgeIndex(tmp_path / "edge")
    Ingestor(embedder, index, "pics").add([Item(image=str(p)) for p in candidate_images])
    yield index
    index.close()


def test_a_url_query_image_is_downloaded_once_for_both_stages(
    filled, embedder, tiny_vlm_dirs, candidate_images: list[Path]
) -> None:  # type: ignore[no-untyped-def]
    scorer = HFScorer.from_pretrained(str(tiny_vlm_dirs["qwen2_vl"]), batch_size=4)
    gets: list[str] = []
    with serve_folder(candidate_images[0].parent, gets) as base:
        url = f"{base}/{candidate_images[0].name}"
        r = Retriever(embedder, filled, "pics", scorer=scorer, limits=ImageLimits(allow_private=True))  # loopback
        hits = r.search(Query(text="a picture", image=url), k=3)
        assert len(hits) == 3 and all(h.method == "logits" for h in hits)
        assert gets == [f"/{candidate_images[0].name}"]  # not once per stage
        coarse = r.search(Query(image=url), k=3, coarse_only=True)
        assert coarse[0].image == str(candidate_images[0].resolve()) and len(gets) == 2
        with pytest.raises(BadItemError):
            r.search(Query(image=f"{base}/missing.png"), k=3)


@pytest.mark.parametrize("urls", [False, True])
def test_a_scorer_that_prefers_urls_gets_the_url(filled, embedder, candidate_images: list[Path], urls: bool) -> None:  # type: ignore[no-untyped-def]
    sc = _Recording(urls)
    with serve_folder(candidate_images[0].parent) as base:
        url = f"{base}/{candidate_images[0].name}"
        r = Retriever(embedder, filled, "pics", scorer=sc, limits=ImageLimits(allow_private=True))  # loopback
        r.search(Query(image=url), k=2)
    got = sc.seen[0].image
    assert got == url if urls else (isinstance(got, bytes) and got == candidate_images[0].read_bytes())


class _Reversing(Scorer):
    """A real Scorer subclass that ranks the coarse list upside down (so the re-ranked top differs from the coarse)."""

    def score(self, query: Query, candidates: Sequence[Candidate]) -> list[Score]:
        return [Score(value=1.0 - c.coarse_score, entropy=1.0, method="logits") for c in candidates]


def test_the_final_event_reports_the_hits_returned_after_the_top_cut(filled, embedder) -> None:  # type: ignore[no-untyped-def]
    """``k=5, top=2``: the model sees five, the caller gets two, and the final event (what the CLI, the web page and
    SSE show) names exactly those two, in the returned order, not the five before the cut."""
    events: list[dict] = []
    r = Retriever(embedder, filled, "pics", scorer=_Reversing())
    hits = r.search(Query(text="a picture"), k=5, top=2, on_event=events.append)
    coarse = r.search(Query(text="a picture"), k=5, coarse_only=True)
    assert [h.id for h in hits] == [coarse[4].id, coarse[3].id]  # re-ranked: the coarse list's last two, reversed
    (final,) = [e for e in events if e["event"] == "final"]
    assert [(h["id"], h["rank"], h["score"]) for h in final["hits"]] == [(h.id, h.rank, h.score) for h in hits]
    assert len(final["hits"]) == 2
