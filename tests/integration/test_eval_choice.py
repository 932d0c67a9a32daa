"""The SugarCrepe and MMEB runners end to end: the tiny CLIP, the embedded store and the fake OpenAI endpoint."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from pydantic import SecretStr

from retllm.errors import ConfigError
from retllm.eval.choice import (
    CANDIDATE_FIELD,
    load_mmeb,
    load_sugarcrepe,
    mmeb_collection_names,
    run_mmeb,
    run_sugarcrepe,
)
from retllm.images import ImageLimits
from retllm.index.edge import EdgeIndex
from retllm.pipeline import Retriever
from retllm.scorers.base import Scorer
from retllm.settings import Settings
from retllm.types import Query
from tests.fakes.openai_server import FakeOpenAI, Switches, fake_openai, option_preference

LISTWISE = "Answer with the option number only"
N_SUGAR = 5


def rand_png(path: Path, seed: int) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    arr = np.random.default_rng(seed).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    Image.fromarray(arr).save(path)
    return path


def openai_scorer(fake: FakeOpenAI) -> Scorer:
    from retllm.scorers.openai import OpenAIScorer

    return OpenAIScorer.from_settings("fake-vlm", Settings(openai_base_url=fake.url, openai_api_key=SecretStr("k")))


def shown_options(body: dict[str, Any]) -> list[str]:
    """The options of a listwise request, in the order shown."""
    content = body["messages"][0]["content"]
    text = content if isinstance(content, str) else [p.get("text", "") for p in content if isinstance(p, dict)][-1]
    return [t for _, t in re.findall(r"^(\d)\. <(.*)>$", text, flags=re.M)]


def rows(out: Path) -> list[dict[str, Any]]:
    return [json.loads(x) for x in (out / "rankings.jsonl").read_text().splitlines()]


@pytest.fixture
def index(tmp_path: Path) -> Iterator[EdgeIndex]:
    ix = EdgeIndex(tmp_path / "edge")
    try:
        yield ix
    finally:
        ix.close()


# --- SugarCrepe --------------------------------------------------------------------------------------------------


@pytest.fixture
def sugar(tmp_path: Path) -> Path:
    """Two categories of N_SUGAR questions (the others missing), one missing image, one corrupt image."""
    root = tmp_path / "sugarcrepe"
    for i in range(N_SUGAR):
        rand_png(root / "val2017" / f"{i:012d}.jpg", i)
    (root / "val2017" / "000000000099.jpg").write_bytes(b"not an image")
    for c, cat in enumerate(("add_obj", "swap_att")):
        entries = {
            str(i): {
                "filename": f"{i:012d}.jpg",
                "caption": f"picture {i} of a thing {c}",
                "negative_caption": f"picture {i} of another thing {c}",
            }
            for i in range(N_SUGAR)
        }
        entries["gone"] = {"filename": "000000000077.jpg", "caption": "a", "negative_caption": "b"}
        entries["corrupt"] = {"filename": "000000000099.jpg", "caption": "a", "negative_caption": "b"}
        (root / f"{cat}.json").write_text(json.dumps(entries))
    return root


def sugar_run(ds, embedder, scorer, tmp_path: Path, name: str, **kw: Any) -> dict[str, Any]:
    return run_sugarcrepe(
        ds,
        embedder=embedder,
        scorer=scorer,
        out_dir=tmp_path / name,
        cache_path=tmp_path / "scores.sqlite",
        fingerprint="fp",
        progress=False,
        **kw,
    )


def test_sugarcrepe_metrics_both_orders_and_a_rerun_without_calls(sugar: Path, embedder, tmp_path: Path) -> None:
    ds = load_sugarcrepe(sugar)
    assert list(ds.categories) == ["add_obj", "swap_att"] and len(ds.problems) == 5 + 2  # 5 files, 2 images
    gap_max = 4.0  # option_preference lies in [0, 4]: a slot bias above it fools any single-order question
    with fake_openai(Switches(slot_bias=gap_max + 1)) as fake:
        scorer = openai_scorer(fake)
        res = sugar_run(ds, embedder, scorer, tmp_path, "run")
        sent = list(fake.pair_requests)
        again = sugar_run(ds, embedder, scorer, tmp_path, "again")
        assert len(fake.pair_requests) == len(sent)  # the rerun made no model call
        scorer.close()

    limits = ImageLimits()
    ranked = rows(tmp_path / "run")
    for cat, qs in ds.categories.items():
        d = res["directions"][cat]
        run = [q for q in qs if q.id != "corrupt"]
        assert d["queries"] == N_SUGAR and d["metric"] == "accuracy"
        (skipped,) = d["skipped_queries"]
        assert skipped.startswith("corrupt: ") and "image" in skipped
        # coarse: the embedder's own query vectors, one question at a time
        coarse_ok = []
        for q in run:
            im = embedder.embed_query(None, limits.load(q.image))["image"]
            cp, cn = (float(np.dot(im, embedder.embed_query(t, None)["text"])) for t in (q.positive, q.negative))
            coarse_ok.append(cp > cn)
        assert d["coarse"]["accuracy"] == pytest.approx(sum(coarse_ok) / N_SUGAR)
        # re-ranked: with both orders averaged, the slot bias cancels and the option preference decides
        want = {q.id: option_preference(q.positive) > option_preference(q.negative) for q in run}
        assert d["reranked"]["accuracy"] == pytest.approx(sum(want.values()) / N_SUGAR)
        assert 0 < sum(want.values()) < N_SUGAR  # the draw has both answers, so "always pos" cannot pass
        mine = {r["query"]: r for r in ranked if r["direction"] == cat}
        assert set(mine) == set(want)
        assert all((mine[q]["reranked"][0] == "pos") == ok for q, ok in want.items())
        for stage in ("coarse", "reranked"):  # the summary is the rankings file's
            assert d[stage]["accuracy"] == pytest.approx(sum(r[stage][0] == "pos" for r in mine.values()) / N_SUGAR)
        # both orders of every question were sent, once each
        orders = [tuple(shown_options(b)) for b in sent]
        for q in run:
            assert orders.count((q.positive, q.negative)) == 1 and orders.count((q.negative, q.positive)) == 1
        assert d["mllm_calls_per_query"] == 2 and d["cache"] == {"hits": 0, "misses": 2 * N_SUGAR}
        assert d["tokens"]["prompt"] > 0 and d["tokens"]["completion"] > 0
        a = again["directions"][cat]
        assert (a["coarse"], a["reranked"]) == (d["coarse"], d["reranked"])
        assert a["cache"] == {"hits": 2 * N_SUGAR, "misses": 0} and a["mllm_calls_per_query"] == 0
        assert a["tokens"] == {"prompt": 0, "completion": 0} and a["cached_queries"] == N_SUGAR
    assert len(sent) == 2 * 2 * N_SUGAR
    assert all(r["cached"] for r in rows(tmp_path / "again")) and not any(r["cached"] for r in ranked)
    assert res["problems"]["count"] == 7 and any("000000000077.jpg" in p for p in res["problems"]["items"])
    assert res["config"]["dataset"] == "sugarcrepe" and res["config"]["rounds"] == 2
    assert (tmp_path / "run" / "report.md").read_text().count("| re-ranked |") == 2


def test_sugarcrepe_one_order_is_fooled_by_a_slot_bias(sugar: Path, embedder, tmp_path: Path) -> None:
    """The control for the test above: one order per question picks whatever sits in the biased slot."""
    ds = load_sugarcrepe(sugar, categories=["add_obj"])
    with fake_openai(Switches(slot_bias=5.0)) as fake:
        scorer = openai_scorer(fake)
        res = sugar_run(ds, embedder, scorer, tmp_path, "one", rounds=1)
        scorer.close()
        firsts = [shown_options(b)[0] for b in fake.pair_requests]
    assert len(firsts) == N_SUGAR
    positives = {q.positive for q in ds.categories["add_obj"]}
    assert res["directions"]["add_obj"]["reranked"]["accuracy"] == pytest.approx(
        sum(f in positives for f in firsts) / N_SUGAR
    )


def test_sugarcrepe_a_tie_is_wrong_and_verbalised_answers_are_cached(sugar: Path, embedder, tmp_path: Path) -> None:
    """A model that always names the first slot, in words: the two orders tie, and a tie is no evidence."""
    ds = load_sugarcrepe(sugar, categories=["swap_att"])
    with fake_openai(Switches(logprobs=False, position_bias=True)) as fake:
        scorer = openai_scorer(fake)
        res = sugar_run(ds, embedder, scorer, tmp_path, "tie")
        sent = len(fake.pair_requests)
        again = sugar_run(ds, embedder, scorer, tmp_path, "again")
        assert sent == 2 * N_SUGAR and len(fake.pair_requests) == sent
        scorer.close()
    assert res["directions"]["swap_att"]["reranked"] == {"accuracy": 0.0}
    assert all(r["reranked"] == ["neg", "pos"] for r in rows(tmp_path / "tie"))
    assert again["directions"]["swap_att"]["reranked"] == {"accuracy": 0.0}  # -inf log-probabilities round-trip
    assert again["directions"]["swap_att"]["cache"] == {"hits": 2 * N_SUGAR, "misses": 0}


def test_sugarcrepe_coarse_only(sugar: Path, embedder, tmp_path: Path) -> None:
    ds = load_sugarcrepe(sugar)
    res = sugar_run(ds, embedder, None, tmp_path, "coarse")
    for d in res["directions"].values():
        assert d["reranked"] is None and d["cache"] is None and d["mllm_calls_per_query"] == 0 and d["queries"] == 5
    assert all(r["reranked"] is None and not r["cached"] for r in rows(tmp_path / "coarse"))
    assert res["config"]["coarse_only"] and "| re-ranked |" not in (tmp_path / "coarse" / "report.md").read_text()
    with pytest.raises(ConfigError, match="rounds"):
        sugar_run(ds, embedder, None, tmp_path, "x", rounds=3)


# --- MMEB --------------------------------------------------------------------------------------------------------

CAPTIONS = ["a red square", "a blue circle", "a green line", "two dots", "a yellow star", "an empty field"]


@pytest.fixture
def mmeb(tmp_path: Path) -> Path:
    """T2I (parquet): text queries over image candidates, one candidate image corrupt.
    I2T (JSONL): image queries over text candidates. Candidates are shared between queries."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = tmp_path / "mmeb"
    imgs = root / "eval_images"
    for i in range(6):
        rand_png(imgs / "T2I" / f"{i}.png", 50 + i)
        rand_png(imgs / "I2T" / f"{i}.png", 80 + i)
    (imgs / "T2I" / "bad.png").write_bytes(b"not an image")
    inst = "<|image_1|>\nRepresent the given image."
    t2i = [
        {
            "qry_text": f"Find an image: {CAPTIONS[i]}",
            "qry_img_path": "",
            "tgt_text": [inst] * 4,
            "tgt_img_path": [f"T2I/{(i + j) % 6}.png" for j in range(4)],
        }
        for i in range(4)
    ]
    t2i.append({**t2i[0], "tgt_img_path": ["T2I/1.png", "T2I/bad.png", "T2I/2.png", "T2I/3.png"]})
    (root / "T2I").mkdir(parents=True)
    pq.write_table(pa.Table.from_pylist(t2i), root / "T2I" / "test-00000-of-00001.parquet")
    i2t = [
        {
            "qry_text": "<|image_1|>\nFind a caption for the image.",
            "qry_img_path": f"I2T/{i}.png",
            "tgt_text": [CAPTIONS[(i + 2 * j) % 6] for j in range(4)],
            "tgt_img_path": ["", "", "", ""],
        }
        for i in range(4)
    ]
    (root / "I2T").mkdir()
    (root / "I2T" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in i2t))
    return root


def mmeb_run(ds, embedder, index, scorer, tmp_path: Path, name: str, k: int = 3, **kw: Any) -> dict[str, Any]:
    return run_mmeb(
        ds,
        embedder=embedder,
        index=index,
        scorer=scorer,
        k=k,
        out_dir=tmp_path / name,
        cache_path=tmp_path / "scores.sqlite",
        fingerprint="fp",
        progress=False,
        **kw,
    )


def test_mmeb_pointwise_metrics_filter_and_a_rerun_without_calls(mmeb: Path, embedder, index, tmp_path: Path) -> None:
    ds = load_mmeb(mmeb)
    assert ds.problems == [] and list(ds.subsets) == ["I2T", "T2I"]
    with fake_openai(Switches(whole_prompt=True)) as fake:
        scorer = openai_scorer(fake)
        res = mmeb_run(ds, embedder, index, scorer, tmp_path, "run")
        sent = len(fake.pair_requests)
        assert sent == 3 * (4 + 4)  # k pairs per query; the query with the corrupt candidate is skipped
        again = mmeb_run(ds, embedder, index, scorer, tmp_path, "again")
        assert len(fake.pair_requests) == sent  # zero model calls, and nothing embedded
        names = mmeb_collection_names(ds)
        direct: dict[tuple[str, str], list[str]] = {}
        for subset, sub in ds.subsets.items():
            r = Retriever(embedder, index, names[subset], scorer=scorer)
            for q in sub.queries[:4]:
                query = Query(text=q.text, image=str(q.image) if q.image else None)
                hits = r.search(query, k=3, top=3, flt={CANDIDATE_FIELD: list(q.candidates)})
                direct[subset, q.id] = [h.id for h in hits]
        scorer.close()

    assert again["corpus"]["embedded_now"] == {"I2T": 0, "T2I": 0}
    assert res["corpus"]["embedded_now"] == {"I2T": 6, "T2I": 6}
    assert any(p.startswith("T2I: ") and "bad.png" in p for p in res["problems"]["items"])
    assert res["directions"]["T2I"]["skipped_queries"][0].startswith("4: candidate ")
    ranked = {(r["direction"], r["query"]): r for r in rows(tmp_path / "run")}
    limits = ImageLimits()
    for subset, sub in ds.subsets.items():
        d = res["directions"][subset]
        qs = sub.queries[:4]
        assert d["queries"] == 4 and d["metric"] == "P@1" and d["mllm_calls_per_query"] == 3
        coarse_hits = 0
        for q in qs:
            row = ranked[subset, q.id]
            assert set(row["coarse"]) <= set(q.candidates) and len(row["coarse"]) == 3  # only its own candidates
            assert sorted(row["reranked"]) == sorted(row["coarse"])
            assert row["reranked"] == direct[subset, q.id]
            # naive coarse top-1: the query's cosine with each of its candidates, embedded one by one
            qv = embedder.embed_query(q.text, limits.load(q.image) if q.image else None)
            qv = qv.get("fused", qv.get("text", qv.get("image")))
            cos = {}
            for c in q.candidates:
                item = sub.candidates[c]
                cv = embedder.embed_query(item.text, limits.load(item.image) if item.image else None)
                cos[c] = float(np.dot(qv, cv.get("fused", cv.get("text", cv.get("image")))))
            best = max(cos, key=cos.__getitem__)
            assert row["coarse"][0] == best
            coarse_hits += best == q.candidates[0]
        assert d["coarse"]["P@1"] == pytest.approx(coarse_hits / 4)
        for stage in ("coarse", "reranked"):  # the summary is the rankings file's
            want = sum(ranked[subset, q.id][stage][0] == q.candidates[0] for q in qs) / 4
            assert d[stage]["P@1"] == pytest.approx(want)
        a = again["directions"][subset]
        assert (a["coarse"], a["reranked"]) == (d["coarse"], d["reranked"])
        assert a["cache"]["misses"] == 0 and a["mllm_calls_per_query"] == 0 and a["cached_queries"] == 4
    assert res["config"]["instructions_dropped"] == {
        "I2T": {"query": "Find a caption for the image."},
        "T2I": {"candidate": "Represent the given image."},
    }
    assert (tmp_path / "run" / "report.md").read_text().count("| re-ranked |") == 2


def test_mmeb_listwise_on_text_candidates(mmeb: Path, embedder, index, tmp_path: Path) -> None:
    ds = load_mmeb(mmeb, ["I2T"])
    with fake_openai() as fake:
        scorer = openai_scorer(fake)
        res = mmeb_run(ds, embedder, index, scorer, tmp_path, "lw", listwise=True)
        bodies = list(fake.pair_requests)
        scorer.close()
    assert len(bodies) == 4 and all(LISTWISE in json.dumps(b) for b in bodies)  # one call per query
    d = res["directions"]["I2T"]
    assert res["config"]["mode"] == "listwise" and d["mllm_calls_per_query"] == 1
    sub = ds.subsets["I2T"]
    text = {c: str(it.text) for c, it in sub.candidates.items()}
    for r in rows(tmp_path / "lw"):
        # the fake prefers options by their text alone: the re-ranked list is the coarse top-k by that preference
        assert r["reranked"] == sorted(r["coarse"], key=lambda c: -option_preference(text[c]))
    shown = [sorted(shown_options(b)) for b in bodies]
    assert sorted(shown) == sorted(sorted(text[c] for c in r["coarse"]) for r in rows(tmp_path / "lw"))


def test_mmeb_refusals_and_coarse_only(mmeb: Path, embedder, index, tmp_path: Path) -> None:
    ds = load_mmeb(mmeb)
    with fake_openai() as fake:
        scorer = openai_scorer(fake)
        with pytest.raises(ConfigError, match="T2I has 7 candidate"):
            mmeb_run(ds, embedder, index, scorer, tmp_path, "lw", listwise=True)
        with pytest.raises(ConfigError, match="2 to 10 options"):
            mmeb_run(load_mmeb(mmeb, ["I2T"]), embedder, index, scorer, tmp_path, "lw", k=11, listwise=True)
        assert fake.pair_requests == [] and index.list_collections() == []  # refused before any work
        scorer.close()
    res = mmeb_run(ds, embedder, index, None, tmp_path, "coarse")
    for d in res["directions"].values():
        assert d["reranked"] is None and d["cache"] is None and d["queries"] == 4
    assert all(r["reranked"] is None for r in rows(tmp_path / "coarse"))
    assert res["config"]["mode"] == "coarse"
    limited = mmeb_run(load_mmeb(mmeb, limit=2), embedder, index, None, tmp_path, "n2", limit=2)
    assert set(limited["config"]["collections"].values()).isdisjoint(res["config"]["collections"].values())
