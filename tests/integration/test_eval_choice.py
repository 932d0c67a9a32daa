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
from retllm.eval.cache import CachedScorer
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
    """Two categories of N_SUGAR questions (the others missing), one missing image, one corrupt image. The tiny CLIP
    ranks the positive caption first for some questions and the negative for others (the tests assert it)."""
    root = tmp_path / "sugarcrepe"
    for i in range(N_SUGAR):
        rand_png(root / "val2017" / f"{i:012d}.jpg", i)
    (root / "val2017" / "000000000099.jpg").write_bytes(b"not an image")
    for c, cat in enumerate(("add_obj", "swap_att")):
        entries = {
            str(i): {
                "filename": f"{i:012d}.jpg",
                "caption": f"a photo of thing {i} in set {c}",
                "negative_caption": f"a photo of {i} things in set {c}",
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
        mine = {r["query"]: r for r in ranked if r["direction"] == cat}
        # coarse, per question: the embedder's own query vectors, one question at a time
        coarse_ok = {}
        for q in run:
            im = embedder.embed_query(None, limits.load(q.image))["image"]
            cp, cn = (float(np.dot(im, embedder.embed_query(t, None)["text"])) for t in (q.positive, q.negative))
            coarse_ok[q.id] = cp > cn
            assert mine[q.id]["coarse"] == (["pos", "neg"] if cp > cn else ["neg", "pos"])
        assert 0 < sum(coarse_ok.values()) < N_SUGAR  # right and wrong coarse answers: "always pos" cannot pass
        assert d["coarse"]["accuracy"] == pytest.approx(sum(coarse_ok.values()) / N_SUGAR)
        # re-ranked: with both orders averaged, the slot bias cancels and the option preference decides
        want = {q.id: option_preference(q.positive) > option_preference(q.negative) for q in run}
        assert d["reranked"]["accuracy"] == pytest.approx(sum(want.values()) / N_SUGAR)
        assert 0 < sum(want.values()) < N_SUGAR  # the draw has both answers, so "always pos" cannot pass
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


def test_sugarcrepe_one_order_is_seeded_per_question_and_fooled_by_a_slot_bias(
    sugar: Path, embedder, tmp_path: Path
) -> None:
    """The control for the test above: one order per question picks whatever sits in the biased slot. That order is
    shuffled per question (the positive is shown first for some, second for others) and the same on a rerun, so
    the rerun is answered from the cache."""
    ds = load_sugarcrepe(sugar, categories=["add_obj"])
    with fake_openai(Switches(slot_bias=5.0)) as fake:
        scorer = openai_scorer(fake)
        res = sugar_run(ds, embedder, scorer, tmp_path, "one", rounds=1)
        shown = [shown_options(b) for b in fake.pair_requests]
        again = sugar_run(ds, embedder, scorer, tmp_path, "again", rounds=1)
        assert len(fake.pair_requests) == len(shown)  # the same orders: all cache hits
        scorer.close()
    qs = [q for q in ds.categories["add_obj"] if q.id != "corrupt"]
    assert len(shown) == N_SUGAR  # the questions in order, one call each
    pos_first = [o == [q.positive, q.negative] for o, q in zip(shown, qs, strict=True)]
    assert all(o in ([q.positive, q.negative], [q.negative, q.positive]) for o, q in zip(shown, qs, strict=True))
    assert 0 < sum(pos_first) < N_SUGAR  # shuffled: neither the given order nor one order for all
    ranked = rows(tmp_path / "one")
    assert [r["reranked"][0] == "pos" for r in ranked] == pos_first  # the biased first slot wins
    assert res["directions"]["add_obj"]["reranked"]["accuracy"] == pytest.approx(sum(pos_first) / N_SUGAR)
    assert [r["reranked"] for r in rows(tmp_path / "again")] == [r["reranked"] for r in ranked]
    assert again["directions"]["add_obj"]["cache"] == {"hits": N_SUGAR, "misses": 0}


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


def test_sugarcrepe_unreadable_answers_fail_keep_the_coarse_ranking_and_are_retried(
    sugar: Path, embedder, tmp_path: Path
) -> None:
    """An answer that names no option fails its question: it is in ``failed_queries``, keeps its coarse ranking
    (right only where the coarse choice was), is not cached, and a rerun with a working model asks again."""
    ds = load_sugarcrepe(sugar, categories=["add_obj"])
    with fake_openai(Switches(garbage=True)) as fake:
        scorer = openai_scorer(fake)
        res = sugar_run(ds, embedder, scorer, tmp_path, "garbage")
        assert len(fake.pair_requests) == N_SUGAR  # the first order fails; the second is not asked
        fake.switches.garbage = False
        fixed = sugar_run(ds, embedder, scorer, tmp_path, "fixed")
        assert len(fake.pair_requests) == N_SUGAR + 2 * N_SUGAR  # nothing was cached: every question asked again
        scorer.close()
    qs = [q for q in ds.categories["add_obj"] if q.id != "corrupt"]
    d = res["directions"]["add_obj"]
    assert sorted(d["failed_queries"]) == sorted(q.id for q in qs)
    ranked = rows(tmp_path / "garbage")
    assert all(r["reranked"] == r["coarse"] and not r["cached"] for r in ranked)
    assert any(r["coarse"] == ["neg", "pos"] for r in ranked)  # a wrong coarse choice stays wrong
    assert d["reranked"] == {"accuracy": d["coarse"]["accuracy"]} and d["cached_queries"] == 0
    f = fixed["directions"]["add_obj"]
    assert f["failed_queries"] == [] and f["cache"] == {"hits": 0, "misses": 2 * N_SUGAR}
    want = [option_preference(q.positive) > option_preference(q.negative) for q in qs]
    assert [r["reranked"][0] == "pos" for r in rows(tmp_path / "fixed")] == want


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
            "qry_text": f"Find me an everyday image that matches the given caption: {CAPTIONS[i]}",
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
            "qry_text": "<|image_1|>\nFind an image caption describing the given everyday image.",
            "qry_img_path": f"I2T/{i}.png",
            "tgt_text": [CAPTIONS[(i + 2 * j) % 6] for j in range(4)],
            "tgt_img_path": ["", "", "", ""],
        }
        for i in range(4)
    ]
    (root / "I2T").mkdir()
    (root / "I2T" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in i2t))
    return root


def mmeb_run(
    ds, embedder, index, scorer, tmp_path: Path, name: str, k: int = 3, fingerprint: str = "fp", **kw: Any
) -> dict[str, Any]:
    return run_mmeb(
        ds,
        embedder=embedder,
        index=index,
        scorer=scorer,
        k=k,
        out_dir=tmp_path / name,
        cache_path=tmp_path / "scores.sqlite",
        fingerprint=fingerprint,
        progress=False,
        **kw,
    )


def naive_order(embedder, sub, q) -> list[str]:
    """A query's candidates by cosine with it, best first: the query and each candidate embedded on its own."""
    limits = ImageLimits()

    def vec(text: str | None, image: Any) -> Any:
        v = embedder.embed_query(text, limits.load(image) if image else None)
        return v.get("fused", v.get("text", v.get("image")))

    qv = vec(q.text, q.image)
    cos = {c: float(np.dot(qv, vec(sub.candidates[c].text, sub.candidates[c].image))) for c in q.candidates}
    return sorted(cos, key=lambda c: -cos[c])


def texts(ds, subset: str = "I2T") -> dict[str, str]:
    """Candidate id -> the text a listwise request shows for it."""
    return {c: str(it.text) for c, it in ds.subsets[subset].candidates.items()}


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
    assert not any(r["cached"] for r in ranked.values()) and all(r["cached"] for r in rows(tmp_path / "again"))
    for subset, sub in ds.subsets.items():
        d = res["directions"][subset]
        qs = sub.queries[:4]
        assert d["queries"] == 4 and d["metric"] == "P@1" and d["mllm_calls_per_query"] == 3
        coarse_hits = 0
        for q in qs:
            row = ranked[subset, q.id]
            assert row["positive"] == q.candidates[0]
            assert set(row["coarse"]) <= set(q.candidates) and len(row["coarse"]) == 3  # only its own candidates
            assert sorted(row["reranked"]) == sorted(row["coarse"])
            assert row["reranked"] == direct[subset, q.id]
            naive = naive_order(embedder, sub, q)
            assert row["coarse"] == naive[:3]
            coarse_hits += naive[0] == q.candidates[0]
        assert d["coarse"]["P@1"] == pytest.approx(coarse_hits / 4)
        for stage in ("coarse", "reranked"):  # the summary is the rankings file's
            want = sum(ranked[subset, q.id][stage][0] == q.candidates[0] for q in qs) / 4
            assert d[stage]["P@1"] == pytest.approx(want)
        a = again["directions"][subset]
        assert (a["coarse"], a["reranked"]) == (d["coarse"], d["reranked"])
        assert a["cache"]["misses"] == 0 and a["mllm_calls_per_query"] == 0 and a["cached_queries"] == 4
    assert res["config"]["instructions_dropped"] == {
        "I2T": {"query": "Find an image caption describing the given everyday image."},
        "T2I": {
            "candidate": "Represent the given image.",
            "query_prefix": "Find me an everyday image that matches the given caption:",
        },
    }
    assert all(q.text in CAPTIONS for q in ds.subsets["T2I"].queries)  # the caption alone is embedded and read
    assert (tmp_path / "run" / "report.md").read_text().count("| re-ranked |") == 2


def test_mmeb_listwise_on_text_candidates(mmeb: Path, embedder, index, tmp_path: Path) -> None:
    """One listwise call per query over its coarse top-k, shown in a seeded order of its own (not the coarse order,
    not one order for all); a rerun shows the same orders, so it is answered from the cache alone, unless the
    settings fingerprint changed."""
    ds = load_mmeb(mmeb, ["I2T"])
    with fake_openai() as fake:
        scorer = openai_scorer(fake)
        res = mmeb_run(ds, embedder, index, scorer, tmp_path, "lw", listwise=True)
        bodies = list(fake.pair_requests)
        again = mmeb_run(ds, embedder, index, scorer, tmp_path, "again", listwise=True)
        assert len(fake.pair_requests) == len(bodies)
        other = mmeb_run(ds, embedder, index, scorer, tmp_path, "other", listwise=True, fingerprint="fp2")
        asked_again = fake.pair_requests[len(bodies) :]
        scorer.close()
    assert len(bodies) == 4 and all(LISTWISE in json.dumps(b) for b in bodies)  # one call per query
    d = res["directions"]["I2T"]
    assert res["config"]["mode"] == "listwise" and d["mllm_calls_per_query"] == 1
    text = texts(ds)
    ranked = rows(tmp_path / "lw")
    for r in ranked:
        # the fake prefers options by their text alone: the re-ranked list is the coarse top-k by that preference
        assert r["reranked"] == sorted(r["coarse"], key=lambda c: -option_preference(text[c]))
    # the queries run in order, one request each: where each coarse rank was shown
    slots = [tuple(shown_options(b).index(text[c]) for c in r["coarse"]) for b, r in zip(bodies, ranked, strict=True)]
    assert any(s != (0, 1, 2) for s in slots) and len(set(slots)) > 1  # shuffled, per query
    assert not any(r["cached"] for r in ranked) and all(r["cached"] for r in rows(tmp_path / "again"))
    assert [r["reranked"] for r in rows(tmp_path / "again")] == [r["reranked"] for r in ranked]
    assert again["directions"]["I2T"]["cache"] == {"hits": 4, "misses": 0}
    assert [shown_options(b) for b in asked_again] == [shown_options(b) for b in bodies]  # same orders, asked again
    assert other["directions"]["I2T"]["cache"] == {"hits": 0, "misses": 4}
    assert not any(r["cached"] for r in rows(tmp_path / "other"))


def test_mmeb_listwise_rounds_k_show_every_candidate_in_every_slot(mmeb: Path, embedder, index, tmp_path: Path) -> None:
    """rounds == k: one call per round, each a cyclic shift of the seeded order, so every candidate sits in every
    slot once, and a slot bias larger than any preference gap cancels: the option preference decides."""
    ds = load_mmeb(mmeb, ["I2T"])
    with fake_openai(Switches(slot_bias=4.0 + 1)) as fake:  # option_preference lies in [0, 4]
        scorer = openai_scorer(fake)
        res = mmeb_run(ds, embedder, index, scorer, tmp_path, "k3", listwise=True, rounds=3)
        bodies = list(fake.pair_requests)
        scorer.close()
    text = texts(ds)
    ranked = rows(tmp_path / "k3")
    assert len(ranked) == 4 and len(bodies) == 3 * 4 and res["directions"]["I2T"]["mllm_calls_per_query"] == 3
    fooled = 0
    for i, r in enumerate(ranked):
        first, *shifts = (shown_options(b) for b in bodies[3 * i : 3 * i + 3])
        assert shifts == [first[1:] + first[:1], first[2:] + first[:2]]
        assert sorted(first) == sorted(text[c] for c in r["coarse"])
        assert r["reranked"] == sorted(r["coarse"], key=lambda c: -option_preference(text[c]))
        fooled += first[0] != max(first, key=option_preference)  # what the first round alone would pick wrongly
    assert fooled > 0  # so a single round would not give the preference order


def test_mmeb_listwise_ties_keep_the_coarse_order(mmeb: Path, embedder, index, tmp_path: Path) -> None:
    """A model that names its choice in words (no logprobs): the chosen candidate comes first and the others, tied
    at probability 0, keep their coarse order behind it (not reversed, not by id)."""
    ds = load_mmeb(mmeb, ["I2T"])
    with fake_openai(Switches(logprobs=False)) as fake:
        scorer = openai_scorer(fake)
        mmeb_run(ds, embedder, index, scorer, tmp_path, "words", listwise=True)
        bodies = list(fake.pair_requests)
        scorer.close()
    text = texts(ds)
    ranked = rows(tmp_path / "words")
    rests = []
    for b, r in zip(bodies, ranked, strict=True):  # one request per query, in order
        named = max(shown_options(b), key=option_preference)  # the option the fake names
        chosen = next(c for c in r["coarse"] if text[c] == named)
        rest = [c for c in r["coarse"] if c != chosen]
        assert r["reranked"] == [chosen, *rest]
        rests.append(rest)
    # not vacuous: for some query the coarse order of the rest is neither the ids' order nor the preference's
    assert any(rest != sorted(rest) for rest in rests)
    assert any(rest != sorted(rest, key=lambda c: -option_preference(text[c])) for rest in rests)


def test_listwise_cache_key_holds_the_fingerprint_the_query_and_the_order_shown(tmp_path: Path) -> None:
    """A listwise answer is reused only for the same settings fingerprint, query (text and image content) and
    options in the same order: anything else is a new request."""
    a, b = rand_png(tmp_path / "a.png", 1), rand_png(tmp_path / "b.png", 2)
    a_again = tmp_path / "copy" / "a.png"
    a_again.parent.mkdir()
    a_again.write_bytes(a.read_bytes())
    options = ["a red square", "a blue circle", "two dots"]
    with fake_openai() as fake:
        scorer = openai_scorer(fake)

        def requests(query: Query, fingerprint: str = "fp", shown: list[str] = options) -> int:
            cached = CachedScorer(scorer, tmp_path / "scores.sqlite", fingerprint=fingerprint)
            before = len(fake.pair_requests)
            cached.choose(query, shown, seed=None)  # shown in the order given
            cached.close()
            return len(fake.pair_requests) - before

        assert requests(Query(text="shapes")) == 1
        assert requests(Query(text="shapes")) == 0
        assert requests(Query(text="shapes"), fingerprint="fp2") == 1
        assert requests(Query(text="shapes"), shown=options[::-1]) == 1
        assert requests(Query(text="colours")) == 1
        assert requests(Query(image=str(a))) == 1
        assert requests(Query(image=str(b))) == 1
        assert requests(Query(image=str(a_again))) == 0  # the same image content
        assert requests(Query(text="shapes", image=str(a))) == 1
        assert requests(Query(text="shapes"), fingerprint="fp2") == 0
        scorer.close()


def test_mmeb_refusals_before_any_work(mmeb: Path, embedder, index, tmp_path: Path) -> None:
    ds = load_mmeb(mmeb)
    with fake_openai() as fake:
        scorer = openai_scorer(fake)
        with pytest.raises(ConfigError, match="T2I has 7 candidate"):
            mmeb_run(ds, embedder, index, scorer, tmp_path, "lw", listwise=True)
        with pytest.raises(ConfigError, match="2 to 10 options"):
            mmeb_run(load_mmeb(mmeb, ["I2T"]), embedder, index, scorer, tmp_path, "lw", k=11, listwise=True)
        # a vector kind that no candidate of a subset stores would find nothing: P@1 = 0 that measures nothing
        with pytest.raises(ConfigError, match="I2T: none of its 6 candidates has a 'image' vector"):
            mmeb_run(ds, embedder, index, scorer, tmp_path, "vi", using="image")
        with pytest.raises(ConfigError, match="has a 'fused' vector"):
            mmeb_run(load_mmeb(mmeb, ["T2I"]), embedder, index, scorer, tmp_path, "vf", using="fused")
        with pytest.raises(ConfigError, match="using must be None"):
            mmeb_run(ds, embedder, index, scorer, tmp_path, "vx", using="colour")
        assert fake.pair_requests == [] and index.list_collections() == []  # refused before any work
        scorer.close()


def test_mmeb_a_vector_kind_that_some_candidates_lack_is_reported(tmp_path: Path, embedder, index) -> None:
    """Candidates without the chosen vector cannot be found: the run says how many, per subset."""
    root = tmp_path / "mix"
    for i in range(2):
        rand_png(root / "eval_images" / "Mix" / f"{i}.png", 200 + i)
    rows_ = [
        {"qry_text": f"a thing {i}", "qry_img_path": "", "tgt_text": ["a cat", "", "a dog"],
         "tgt_img_path": ["", f"Mix/{i}.png", ""]}
        for i in range(2)
    ]  # fmt: skip
    (root / "Mix").mkdir(parents=True)
    (root / "Mix" / "test.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows_))
    res = mmeb_run(load_mmeb(root), embedder, index, None, tmp_path, "text", using="text")
    assert "Mix: 2 of 4 candidates have no 'text' vector and cannot be found in this run" in res["problems"]["items"]
    assert res["config"]["using"] == "text"
    assert all(len(r["coarse"]) == 2 for r in rows(tmp_path / "text"))  # the two text candidates only


def test_mmeb_runs_with_and_without_instructions_keep_each_others_collections(
    mmeb: Path, embedder, index, tmp_path: Path
) -> None:
    """Kept instructions are other texts, so other candidate ids: their own collections, and neither run deletes
    or re-embeds the other's points. The config records how the run was made."""
    plain = mmeb_run(load_mmeb(mmeb), embedder, index, None, tmp_path, "plain")
    kept = mmeb_run(load_mmeb(mmeb, keep_instructions=True), embedder, index, None, tmp_path, "kept")
    assert kept["corpus"]["embedded_now"] == {"I2T": 6, "T2I": 6}
    assert {n: c + "-inst" for n, c in plain["config"]["collections"].items()} == kept["config"]["collections"]
    again = mmeb_run(load_mmeb(mmeb), embedder, index, None, tmp_path, "again")
    assert again["corpus"]["embedded_now"] == {"I2T": 0, "T2I": 0}
    assert [r["coarse"] for r in rows(tmp_path / "again")] == [r["coarse"] for r in rows(tmp_path / "plain")]
    kept2 = mmeb_run(load_mmeb(mmeb, keep_instructions=True), embedder, index, None, tmp_path, "kept2")
    assert kept2["corpus"]["embedded_now"] == {"I2T": 0, "T2I": 0}
    cfg, kcfg = plain["config"], kept["config"]
    assert (cfg["instructions_kept"], kcfg["instructions_kept"]) == (False, True)
    assert kcfg["instructions_dropped"] == {} and cfg["instructions_dropped"]["I2T"]
    assert (cfg["index"], cfg["vector_fusion"], cfg["fusion_weight"]) == ("EdgeIndex", index.fusion, 0.5)
    assert (cfg["mode"], cfg["k"], cfg["using"], cfg["coarse_only"]) == ("coarse", 3, None, True)


def test_mmeb_coarse_only_is_the_naive_cosine_order(mmeb: Path, embedder, index, tmp_path: Path) -> None:
    """Without a scorer: each query's top-k is its candidates by cosine, and P@1 is that order's."""
    ds = load_mmeb(mmeb)
    res = mmeb_run(ds, embedder, index, None, tmp_path, "coarse")
    ranked = {(r["direction"], r["query"]): r for r in rows(tmp_path / "coarse")}
    for subset, sub in ds.subsets.items():
        d = res["directions"][subset]
        assert d["reranked"] is None and d["cache"] is None and d["queries"] == 4
        qs = sub.queries[:4]  # the fifth (T2I) names the corrupt candidate: skipped
        naive = {q.id: naive_order(embedder, sub, q) for q in qs}
        assert all(ranked[subset, q.id]["coarse"] == naive[q.id][:3] for q in qs)
        assert d["coarse"]["P@1"] == pytest.approx(sum(naive[q.id][0] == q.candidates[0] for q in qs) / 4)
    assert all(r["reranked"] is None and not r["cached"] for r in ranked.values())
    assert res["config"]["mode"] == "coarse"
    limited = mmeb_run(load_mmeb(mmeb, limit=2), embedder, index, None, tmp_path, "n2", limit=2)
    assert set(limited["config"]["collections"].values()).isdisjoint(res["config"]["collections"].values())


def test_a_category_whose_every_image_fails_to_decode_fails_the_run_with_one_line(embedder, tmp_path: Path) -> None:
    """Files there, none decodable: the loader keeps them (it checks they exist), the run skips them all. An
    empty category measures nothing: one line naming the folder, the count and the first reason, no report."""
    root = tmp_path / "sugar"
    (root / "val2017").mkdir(parents=True)
    for i in range(2):
        (root / "val2017" / f"{i:012d}.jpg").write_bytes(b"not an image")
    entries = {str(i): {"filename": f"{i:012d}.jpg", "caption": "a", "negative_caption": "b"} for i in range(2)}
    (root / "add_obj.json").write_text(json.dumps(entries))
    with pytest.raises(ConfigError) as e:
        sugar_run(load_sugarcrepe(root, categories=["add_obj"]), embedder, None, tmp_path, "run")
    msg = str(e.value)
    assert msg.startswith(f"sugarcrepe: nothing to evaluate in {root}: every add_obj question was skipped; 2 entries")
    assert "first: 0: " in msg and "\n" not in msg and not (tmp_path / "run").exists()
