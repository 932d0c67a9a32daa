"""The evaluation runner and its score cache, with the tiny CLIP, the embedded store and the fake endpoint."""

from __future__ import annotations

import base64
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retllm.eval.cache import CachedScorer, score_from_json, score_to_json, settings_fingerprint
from retllm.eval.datasets import load
from retllm.eval.runner import collection_names, run_eval
from retllm.index.edge import EdgeIndex
from retllm.pipeline import Retriever
from retllm.scorers.base import Candidate, Score, Scorer
from retllm.settings import Settings
from retllm.types import Query
from tests.fakes.openai_server import FakeOpenAI, fake_openai

N_IMAGES = 6


def write_flickr(root: Path, n: int = N_IMAGES, *, missing: bool = True) -> Path:
    """A Karpathy-layout flickr30k folder: ``n`` tiny distinct PNGs x 2 captions, plus one entry without its file."""
    (root / "images").mkdir(parents=True)
    entries = []
    for i in range(n):
        arr = np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "images" / f"{i}.png")
        sents = [{"raw": f"picture number {i} with colour {c}"} for c in ("red", "blue")]
        entries.append({"filename": f"{i}.png", "split": "test", "sentences": sents})
        if i == 1 and missing:
            entries.append({"filename": "gone.png", "split": "test", "sentences": [{"raw": "lost"}]})
    (root / "dataset_flickr30k.json").write_text(json.dumps({"images": entries}))
    return root


def recall(rankings: dict[str, list[str]], positives: dict[str, set[str]], k: int) -> float:
    """Naive reference recall@k."""
    return sum(bool(set(r[:k]) & positives[q]) for q, r in rankings.items()) / len(rankings)


class Interrupting(Scorer):
    """The real scorer, until ``calls`` calls are spent: then the run is interrupted."""

    def __init__(self, inner: Scorer, calls: int) -> None:
        self.inner, self.calls, self.id = inner, calls, inner.id

    def score(self, query, candidates, *, on_event=None):  # type: ignore[no-untyped-def]
        if self.calls == 0:
            raise KeyboardInterrupt
        self.calls -= 1
        return self.inner.score(query, candidates)


@pytest.fixture
def fake() -> Iterator[FakeOpenAI]:
    with fake_openai() as f:
        yield f


@pytest.fixture
def scorer(fake: FakeOpenAI) -> Iterator[Scorer]:
    from retllm.scorers.openai import OpenAIScorer

    s = OpenAIScorer.from_settings("fake-vlm", Settings(openai_base_url=fake.url, openai_api_key="k"))
    yield s
    s.close()


@pytest.fixture
def flickr(tmp_path: Path):
    return load("flickr30k", write_flickr(tmp_path / "flickr"))


@pytest.fixture
def index(tmp_path: Path) -> Iterator[EdgeIndex]:
    with EdgeIndex(tmp_path / "edge") as ix:
        yield ix


def go(evalset, embedder, index, scorer, tmp_path: Path, *, k: int = 3, fingerprint: str = "fp", name: str = "run"):
    return run_eval(
        evalset,
        embedder=embedder,
        index=index,
        scorer=scorer,
        k=k,
        out_dir=tmp_path / name,
        cache_path=tmp_path / "scores.sqlite",
        fingerprint=fingerprint,
        progress=False,
    )


def test_a_missing_image_is_a_problem_and_the_run_goes_on(flickr, embedder, index, tmp_path: Path) -> None:
    assert len(flickr.images) == N_IMAGES and len(flickr.problems) == 1
    res = go(flickr, embedder, index, None, tmp_path)
    assert res["problems"]["count"] == 1 and "gone.png" in res["problems"]["items"][0]
    t2i = res["directions"]["text_to_image"]
    assert t2i["queries"] == 2 * N_IMAGES and t2i["reranked"] is None and set(t2i["coarse"]) == {"R@1", "R@5", "R@10"}
    assert res["directions"]["image_to_text"]["queries"] == N_IMAGES
    assert res["corpus"]["embedded_now"] == {"images": N_IMAGES, "texts": 2 * N_IMAGES}


def test_score_json_round_trip() -> None:
    s = Score(0.1 + 0.2, p_true=1 / 3, entropy=0.6931471805599453, method="logprobs", retraced=7, revisits=1)
    assert score_from_json(score_to_json(s)) == s


def test_metrics_match_the_pipeline_and_a_rerun_calls_no_model(
    flickr, embedder, index, scorer, fake: FakeOpenAI, tmp_path: Path
) -> None:
    res = go(flickr, embedder, index, scorer, tmp_path)
    sent = len(fake.pair_requests)
    assert sent == 3 * (2 * N_IMAGES + N_IMAGES)  # k pairs per query, both directions
    names = collection_names(flickr)
    for direction, coll, using, queries, positives in (
        (
            "text_to_image",
            names["images"],
            "image",
            {t: Query(text=c) for t, c in flickr.texts.items()},
            flickr.text_to_images,
        ),
        (
            "image_to_text",
            names["texts"],
            "text",
            {i: Query(image=str(p)) for i, p in flickr.images.items()},
            flickr.image_to_texts,
        ),
    ):
        r = Retriever(embedder, index, coll, scorer=scorer)
        fine = {q: [h.id for h in r.search(x, k=3, top=3, using=using)] for q, x in queries.items()}
        coarse = {q: [h.id for h in r.coarse(x, k=10, using=using)] for q, x in queries.items()}
        got = res["directions"][direction]
        assert got["reranked"]["R@1"] == pytest.approx(recall(fine, positives, 1))
        for k in (1, 5, 10):
            assert got["coarse"][f"R@{k}"] == pytest.approx(recall(coarse, positives, k))
        assert got["mllm_calls_per_query"] == 3
    before = len(fake.pair_requests)
    again = go(flickr, embedder, index, scorer, tmp_path, name="again")
    assert len(fake.pair_requests) == before  # zero model calls, and nothing embedded
    assert again["corpus"]["embedded_now"] == {"images": 0, "texts": 0}
    for direction in res["directions"]:
        a, b = res["directions"][direction], again["directions"][direction]
        assert (a["coarse"], a["reranked"]) == (b["coarse"], b["reranked"])
        assert b["cache"]["misses"] == 0 and b["mllm_calls_per_query"] == 0
    assert (tmp_path / "again" / "report.md").read_text().count("| re-ranked |") == 2


def test_a_larger_k_scores_only_the_new_pairs(flickr, embedder, index, scorer, fake: FakeOpenAI, tmp_path) -> None:
    go(flickr, embedder, index, scorer, tmp_path, k=2)
    before = len(fake.pair_requests)
    res = go(flickr, embedder, index, scorer, tmp_path, k=3, name="k3")
    queries = 3 * N_IMAGES
    assert len(fake.pair_requests) - before == queries
    assert sum(d["cache"]["misses"] for d in res["directions"].values()) == queries


def test_an_interrupted_run_resumes(flickr, embedder, index, scorer, fake: FakeOpenAI, tmp_path: Path) -> None:
    with pytest.raises(KeyboardInterrupt):
        go(flickr, embedder, index, Interrupting(scorer, calls=4), tmp_path)
    assert len(fake.pair_requests) == 4 * 3
    res = go(flickr, embedder, index, scorer, tmp_path)
    assert len(fake.pair_requests) == 3 * 3 * N_IMAGES  # each pair once, over both runs
    assert sum(d["cache"]["hits"] for d in res["directions"].values()) == 4 * 3


def test_the_key_follows_the_fingerprint(scorer, fake: FakeOpenAI, tmp_path: Path, candidate_images) -> None:
    q = Query(text="a cat")
    cands = [Candidate(f"c{i}", image=str(p)) for i, p in enumerate(candidate_images[:3])]
    base = Settings()
    fps = [
        settings_fingerprint(base),
        settings_fingerprint(base.model_copy(update={"retrace": base.retrace.model_copy(update={"enabled": False})})),
        settings_fingerprint(base).replace('"prompts": "', '"prompts": "0'),  # an edited prompt file
    ]
    assert len(set(fps)) == 3
    first = None
    for fp in fps:
        cached = CachedScorer(scorer, tmp_path / "s.sqlite", fingerprint=fp)
        scores = cached.score(q, cands)
        assert (cached.hits, cached.misses) == (0, 3)
        again = CachedScorer(scorer, tmp_path / "s.sqlite", fingerprint=fp)
        assert again.score(q, cands) == scores and (again.hits, again.misses) == (3, 0)
        first = first or scores
        assert [s.value for s in scores] == [s.value for s in first]  # the same model: new keys, same answers
        cached.close()
        again.close()
    assert len(fake.pair_requests) == 9


def test_fallbacks_are_not_cached(scorer, tmp_path: Path, candidate_images) -> None:
    cands = [Candidate("ok", image=str(candidate_images[0])), Candidate("bad", image=str(tmp_path / "nope.png"))]
    cached = CachedScorer(scorer, tmp_path / "s.sqlite", fingerprint="fp")
    first = cached.score(Query(text="x"), cands)
    assert not first[0].failed and first[1].failed
    assert len(cached) == 1
    cached.score(Query(text="x"), cands)
    assert (cached.hits, cached.misses) == (1, 3)


def test_a_collection_of_other_data_under_the_same_ids_is_refreshed(embedder, index, tmp_path: Path) -> None:
    a = load("flickr30k", write_flickr(tmp_path / "a", missing=False))
    go(a, embedder, index, None, tmp_path, name="a")
    b_root = write_flickr(tmp_path / "b", missing=False)
    data = json.loads((b_root / "dataset_flickr30k.json").read_text())
    for e in data["images"]:  # the same ids, other captions (another copy of the data, re-captioned)
        e["sentences"] = [{"raw": s["raw"].replace("picture", "photo")} for s in e["sentences"]]
    (b_root / "dataset_flickr30k.json").write_text(json.dumps(data))
    b = load("flickr30k", b_root)
    res = go(b, embedder, index, None, tmp_path, name="b")
    assert res["corpus"]["embedded_now"] == {"images": N_IMAGES, "texts": 2 * N_IMAGES}  # B's files and captions
    names = collection_names(b)
    stored = index.payloads(names["texts"], list(b.texts))
    assert all(p["text"] == b.texts[i] for i, p in stored.items()) and len(stored) == 2 * N_IMAGES
    stored = index.payloads(names["images"], list(b.images))
    assert all(p["image"] == str(b.images[i].resolve()) for i, p in stored.items())


def test_a_corrupt_image_is_skipped_and_the_run_goes_on(embedder, index, tmp_path: Path) -> None:
    root = write_flickr(tmp_path / "c", missing=False)
    (root / "images" / "3.png").write_bytes(b"not an image")
    res = go(load("flickr30k", root), embedder, index, None, tmp_path, k=3)
    i2t = res["directions"]["image_to_text"]
    assert i2t["queries"] == N_IMAGES - 1 and i2t["skipped_queries"][0].startswith("3: ")
    for d in res["directions"].values():  # coarse lists hold every candidate once, also past k
        assert d["queries"] > 0
    ranks = [json.loads(x) for x in (tmp_path / "run" / "rankings.jsonl").read_text().splitlines()]
    assert ranks and all(len(r["coarse"]) == len(set(r["coarse"])) for r in ranks)


def test_a_corpus_that_ingest_empties_fails_the_run_with_one_line(embedder, index, tmp_path: Path) -> None:
    """Every image file there but none decodable: the loader keeps them, ingest skips them all. That run has
    nothing to measure: one error naming the folder, the count and the first reason, and no report."""
    from retllm.errors import ConfigError

    root = write_flickr(tmp_path / "c", n=3, missing=False)
    for p in (root / "images").iterdir():
        p.write_bytes(b"not an image")
    with pytest.raises(ConfigError) as e:
        go(load("flickr30k", root), embedder, index, None, tmp_path)
    msg = str(e.value)
    assert msg.startswith(f"flickr30k: nothing to evaluate in {root}: no item of corpus 'images' could be embedded")
    assert "; 3 entries skipped, first: 0: not a supported image format" in msg and "\n" not in msg
    assert not (tmp_path / "run").exists()


def test_hosted_tokens_and_cache_only_queries_are_reported(
    flickr, embedder, index, scorer, fake: FakeOpenAI, tmp_path: Path
) -> None:
    from tests.fakes.openai_server import _prompt_tokens

    # the capability probes run once, on the first image pair: before the count
    scorer.score(Query(text="warm up"), [Candidate("w", image=str(flickr.images["0"]))])
    n0 = len(fake.requests)
    res = go(flickr, embedder, index, scorer, tmp_path)
    sent = fake.requests[n0:]
    assert len(sent) == len(fake.pair_requests) - 1
    tools = [len(json.dumps(b["tools"])) // 4 if b.get("tools") else 0 for b in sent]  # schemas the fake renders
    want = sum(_prompt_tokens(b["messages"], count_images=True) for b in sent) + sum(tools)
    tokens = [d["tokens"] for d in res["directions"].values()]
    assert sum(t["prompt"] for t in tokens) == want
    assert sum(t["completion"] for t in tokens) == len(sent)  # the fake answers one token
    rows = [json.loads(x) for x in (tmp_path / "run" / "rankings.jsonl").read_text().splitlines()]
    assert rows and not any(r["cached"] for r in rows) and all(r["latency_s"] > 0 for r in rows)
    assert all(d["cached_queries"] == 0 and d["latency_uncached_s"] for d in res["directions"].values())

    again = go(flickr, embedder, index, scorer, tmp_path, name="again")
    rows = [json.loads(x) for x in (tmp_path / "again" / "rankings.jsonl").read_text().splitlines()]
    assert rows and all(r["cached"] for r in rows)
    for d in again["directions"].values():
        assert d["tokens"] == {"prompt": 0, "completion": 0}
        assert d["cached_queries"] == d["queries"] and d["latency_uncached_s"] is None
    assert "answered from the cache alone" in (tmp_path / "again" / "report.md").read_text()


def test_image_to_text_re_ranking_follows_the_model(
    flickr, embedder, index, scorer, fake: FakeOpenAI, tmp_path: Path
) -> None:
    from tests.fakes.openai_server import expected_p_true

    fake.switches.whole_prompt = True  # P(True) depends on the candidate caption too, not only on the image
    go(flickr, embedder, index, scorer, tmp_path)
    p_of: dict[tuple[bytes, str], float] = {}
    for b in fake.pair_requests:
        text = json.dumps(b["messages"])
        caption = next(t for t, c in flickr.texts.items() if json.dumps(c)[1:-1] in text)
        image = next(i for i, p in flickr.images.items() if base64.b64encode(p.read_bytes()).decode() in text)
        p_of[(image, caption)] = expected_p_true(json.dumps(b["messages"], sort_keys=True).encode())
    rows = [json.loads(x) for x in (tmp_path / "run" / "rankings.jsonl").read_text().splitlines()]
    i2t = [r for r in rows if r["direction"] == "image_to_text"]
    assert len(i2t) == N_IMAGES
    moved = 0
    for r in i2t:
        top = r["coarse"][:3]
        want = sorted(top, key=lambda c: -p_of[(r["query"], c)])
        assert r["reranked"][:3] == want and r["reranked"][3:] == r["coarse"][3:]
        moved += want != top
    assert moved  # the model's order is not the coarse one for some query, so the check above means something


def test_a_pair_that_falls_back_is_counted(flickr, embedder, index, scorer, fake: FakeOpenAI, tmp_path) -> None:
    fake.switches.too_long_marker = flickr.texts["2#0"]  # the image->text pairs showing this caption get a 400
    res = go(flickr, embedder, index, scorer, tmp_path)
    rows = [json.loads(x) for x in (tmp_path / "run" / "rankings.jsonl").read_text().splitlines()]
    shown = sum("2#0" in r["coarse"][:3] for r in rows if r["direction"] == "image_to_text")
    i2t = res["directions"]["image_to_text"]
    assert shown and i2t["pairs"]["fallback"] == shown and i2t["pairs"]["total"] == 3 * N_IMAGES
    assert res["directions"]["text_to_image"]["failed_queries"] == ["2#0"]  # every pair of that query fell back
    assert f"{shown} of {3 * N_IMAGES} pairs fell back" in (tmp_path / "run" / "report.md").read_text()


def test_a_limit_run_leaves_the_full_collections_alone(embedder, index, tmp_path: Path) -> None:
    root = write_flickr(tmp_path / "f", missing=False)
    full = load("flickr30k", root)
    go(full, embedder, index, None, tmp_path, name="full")
    small = load("flickr30k", root, limit=2)
    res = run_eval(
        small,
        embedder=embedder,
        index=index,
        scorer=None,
        k=3,
        out_dir=tmp_path / "small",
        cache_path=tmp_path / "scores.sqlite",
        fingerprint="fp",
        limit=2,
        progress=False,
    )
    assert res["corpus"]["embedded_now"] == {"images": 2, "texts": 4}
    assert collection_names(small, limit=2) != collection_names(full)
    assert len(index.existing(collection_names(full)["images"], list(full.images))) == N_IMAGES
    again = go(full, embedder, index, None, tmp_path, name="full2")
    assert again["corpus"]["embedded_now"] == {"images": 0, "texts": 0}


def write_mbeir_task(root: Path, n: int = 5) -> Path:
    """An M-BEIR folder: a text->image task over n pool images, and an image->text task over n pool texts."""
    from tests.unit.test_eval_datasets import mbeir_query, write_mbeir

    (root / "mbeir_images").mkdir(parents=True)
    for i in range(n):
        arr = np.random.default_rng(100 + i).integers(0, 256, (24, 24, 3), dtype=np.uint8)
        Image.fromarray(arr).save(root / "mbeir_images" / f"{i}.png")
    pool = [{"did": f"1:{i}", "txt": None, "img_path": f"mbeir_images/{i}.png", "modality": "image"} for i in range(n)]
    queries = [mbeir_query(f"9:{i}", f"picture number {i}", None, [f"1:{i}"]) for i in range(n)]
    write_mbeir(root, "toy_task0", queries=queries, pool=pool)
    pool = [{"did": f"2:{i}", "txt": f"caption of picture {i}", "img_path": None, "modality": "text"} for i in range(n)]
    queries = [mbeir_query(f"8:{i}", None, f"mbeir_images/{i}.png", [f"2:{i}", f"2:{(i + 1) % n}"]) for i in range(n)]
    write_mbeir(root, "toy_task3", queries=queries, pool=pool)
    return root


def test_mbeir_tasks_search_their_own_pools(embedder, index, scorer, fake: FakeOpenAI, tmp_path: Path) -> None:
    fake.switches.whole_prompt = True
    ds = load("mbeir", write_mbeir_task(tmp_path / "mbeir"))
    res = go(ds, embedder, index, scorer, tmp_path, k=3)
    assert list(res["directions"]) == ["toy_task0", "toy_task3"]
    assert res["corpus"]["items"] == {"toy_task0": 5, "toy_task3": 5}
    names = collection_names(ds)
    assert len(set(names.values())) == 2
    for section in ds.sections():
        r = Retriever(embedder, index, names[section.corpus], scorer=scorer)
        fine = {q: [h.id for h in r.search(x, k=3, top=3)] for q, x in section.queries.items()}
        coarse = {q: [h.id for h in r.coarse(x, k=10)] for q, x in section.queries.items()}
        assert all(set(f) <= {it.id for it in ds.pools[section.corpus]} for f in fine.values())
        got = res["directions"][section.name]
        assert got["queries"] == 5 and got["mllm_calls_per_query"] == 3
        assert got["reranked"]["R@1"] == pytest.approx(recall(fine, section.positives, 1))
        for k in (1, 5, 10):
            assert got["coarse"][f"R@{k}"] == pytest.approx(recall(coarse, section.positives, k))
    text = (tmp_path / "run" / "report.md").read_text()
    assert "## toy_task0 (5 queries)" in text and "5 toy_task0, 5 toy_task3" in text


def test_an_image_changed_in_place_is_embedded_again(embedder, index, tmp_path: Path) -> None:
    root = write_flickr(tmp_path / "f", missing=False)
    go(load("flickr30k", root), embedder, index, None, tmp_path, name="a")
    Image.fromarray(np.full((24, 24, 3), 7, np.uint8)).save(root / "images" / "3.png")  # same path, new picture
    ds = load("flickr30k", root)
    res = go(ds, embedder, index, None, tmp_path, name="b")
    assert res["corpus"]["embedded_now"] == {"images": 1, "texts": 0}
    r = Retriever(embedder, index, collection_names(ds)["images"])
    rows = [json.loads(x) for x in (tmp_path / "b" / "rankings.jsonl").read_text().splitlines()]
    for row in (x for x in rows if x["direction"] == "text_to_image"):
        assert row["coarse"] == [h.id for h in r.coarse(Query(text=ds.texts[row["query"]]), k=10, using="image")]


def test_extra_ids_are_deleted_and_another_embedder_rebuilds(embedder, index, tmp_path: Path, tiny_clip_dir) -> None:
    from retllm.embedders.open_clip import OpenClipEmbedder
    from tests.fakes.tiny_clip import build_tiny_clip

    root = write_flickr(tmp_path / "f", missing=False)
    go(load("flickr30k", root), embedder, index, None, tmp_path, name="a")
    data = json.loads((root / "dataset_flickr30k.json").read_text())
    data["images"] = data["images"][1:]  # image 0 and its captions left the dataset
    (root / "dataset_flickr30k.json").write_text(json.dumps(data))
    ds = load("flickr30k", root)
    go(ds, embedder, index, None, tmp_path, name="b")
    names = collection_names(ds)
    assert index.existing(names["images"], ["0", "1"]) == {"1"} and "0#0" not in index.existing(names["texts"], ["0#0"])
    other = OpenClipEmbedder.from_pretrained(f"local-dir:{build_tiny_clip(tmp_path / 'clip2', seed=7)}", device="cpu")
    assert other.dim == embedder.dim and other.id != embedder.id  # same size: only the recorded id tells them apart
    res = go(ds, other, index, None, tmp_path, name="c")
    assert res["corpus"]["embedded_now"] == {"images": N_IMAGES - 1, "texts": 2 * (N_IMAGES - 1)}


def test_a_new_fusion_weight_re_embeds_text_image_items_and_is_recorded(embedder, index, tmp_path: Path) -> None:
    from tests.unit.test_eval_datasets import mbeir_query, write_mbeir

    root = tmp_path / "m"
    (root / "img").mkdir(parents=True)
    for i in range(4):
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (24, 24, 3), dtype=np.uint8)).save(
            root / "img" / f"{i}.png"
        )
    pool = [
        {"did": f"1:{i}", "txt": f"caption {i}", "img_path": f"img/{i}.png", "modality": "image,text"} for i in range(4)
    ]
    pool += [{"did": "1:9", "txt": "text only", "img_path": None, "modality": "text"}]
    write_mbeir(root, "mix_task2", queries=[mbeir_query("9:0", "caption 0", None, ["1:0"])], pool=pool)
    ds = load("mbeir", root)
    runs = {}
    embedded = []
    for w in (0.5, 0.9, 0.9):
        runs[w] = run_eval(
            ds, embedder=embedder, index=index, scorer=None, k=3, out_dir=tmp_path / f"w{w}",
            cache_path=tmp_path / "s.sqlite", fingerprint="fp", fusion_weight=w, progress=False,
        )  # fmt: skip
        assert runs[w]["config"]["fusion_weight"] == w and runs[w]["config"]["index"] == "EdgeIndex"
        embedded.append(runs[w]["corpus"]["embedded_now"]["mix_task2"])
    assert embedded == [5, 4, 0]  # the text-only item keeps its vector; the third run finds nothing to redo
    assert collection_names(ds, limit=1) == collection_names(ds)  # a pool is whole under --limit: one collection


def test_the_key_holds_the_candidate_text_and_the_image_content(scorer, tmp_path: Path, candidate_images) -> None:
    import os
    import shutil

    img = tmp_path / "c.png"
    shutil.copy(candidate_images[0], img)
    cached = CachedScorer(scorer, tmp_path / "s.sqlite", fingerprint="fp")
    q = Query(text="a cat")
    cached.score(q, [Candidate("c", text="a red cat", image=str(img))])
    cached.score(q, [Candidate("c", text="a blue dog", image=str(img))])  # same id and picture, other caption
    assert (cached.hits, cached.misses) == (0, 2)
    st = img.stat()
    shutil.copy(candidate_images[1], img)  # same path, other picture, even with the old timestamps
    os.utime(img, ns=(st.st_atime_ns, st.st_mtime_ns))
    cached.score(q, [Candidate("c", text="a red cat", image=str(img))])
    assert (cached.hits, cached.misses) == (0, 3)
    cached.score(q, [Candidate("c", text="a red cat", image=str(img))])
    assert (cached.hits, cached.misses) == (1, 3)
    cached.close()


def test_cut_offs_past_k_are_marked_coarse_and_the_config_is_recorded(
    flickr, embedder, index, scorer, tmp_path
) -> None:
    res = run_eval(
        flickr, embedder=embedder, index=index, scorer=scorer, k=5, out_dir=tmp_path / "r",
        cache_path=tmp_path / "s.sqlite", fingerprint='{"dtype": "float32"}', progress=False,
        extra_config={"preset": {"name": "small"}},
    )  # fmt: skip
    cfg = res["config"]
    assert cfg["fingerprint"] == '{"dtype": "float32"}' and cfg["preset"] == {"name": "small"}
    assert cfg["collections"] == collection_names(flickr) and set(cfg["collections"].values()) <= set(
        index.list_collections()
    )
    assert (cfg["k"], cfg["coarse_only"], cfg["scorer"], cfg["embedder"]) == (5, False, scorer.id, embedder.id)
    assert cfg["cache"] == str(tmp_path / "s.sqlite") and {"retllm", "packages", "git_commit", "date"} <= set(cfg)
    for d in res["directions"].values():
        assert d["reranked_ks_beyond_k_are_coarse"] == [10] and d["pairs_per_query"] == 5
        assert d["reranked"]["R@10"] == d["coarse"]["R@10"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert report.count(" (coarse) |") == 2 and "| re-ranked |" in report  # R@10 only (R@5 is k itself)
