"""HFScorer on tiny random-weight Qwen2-VL, Qwen2.5-VL, Qwen3-VL and Idefics3 loaded through from_pretrained."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.nn.functional as F

from retllm.errors import ConfigError
from retllm.prompting import load_prompt
from retllm.scorers.base import Candidate
from retllm.scorers.families import FAMILIES, answer_token_ids
from retllm.scorers.hf import HFScorer
from retllm.scorers.retrace import RetraceConfig
from retllm.types import Query

FAMS = ["qwen2_vl", "qwen2_5_vl", "qwen3_vl", "idefics3", "idefics3_split", "smolvlm"]
OFF = RetraceConfig(enabled=False)


def scorer(dirs: dict[str, Path], fam: str, retrace: RetraceConfig = OFF, **kw) -> HFScorer:
    kw.setdefault("image_tokens", None)  # the tiny checkpoints' own few-token budget keeps the suite fast
    return HFScorer.from_pretrained(str(dirs[fam]), device="cpu", retrace=retrace, **kw)


def cands(paths: list[Path], n: int | None = None) -> list[Candidate]:
    return [Candidate(f"c{i}", image=str(p), coarse_score=0.5 - i / 100) for i, p in enumerate(paths[:n])]


def max_diff(a, b, field: str) -> float:
    return max(abs(getattr(x, field) - getattr(y, field)) for x, y in zip(a, b, strict=True))


def plain_inputs(s: HFScorer, query: Query, c: Candidate) -> dict:
    r, ims = s._pair(query, s.load(query.image) if query.image else None, c)
    return dict(s.processor(text=[s._chat_text(r)], images=[ims] if ims else None, return_tensors="pt"))


@pytest.mark.parametrize("fam", FAMS)
def test_scores_and_provenance(tiny_vlm_dirs, candidate_images, fam: str) -> None:
    s = scorer(tiny_vlm_dirs, fam)
    out = s.score(Query(text="a red circle"), cands(candidate_images, 3))
    assert len(out) == 3
    for sc in out:
        assert 0 < sc.value < 1 and 0 < sc.p_true < 1 and sc.entropy > 0
        assert sc.method == "logits" and sc.retraced is None and sc.revisits == 0 and sc.latency_s > 0


@pytest.mark.parametrize("fam", FAMS)
def test_score_is_two_way_normalised_over_the_full_forward(tiny_vlm_dirs, candidate_images, fam: str) -> None:
    """Last-position-only LM head gives the same numbers as the full forward, in fp32."""
    s = scorer(tiny_vlm_dirs, fam, vision_cache_size=0)
    q, c = Query(text="a blue square"), cands(candidate_images, 1)[0]
    got = s.score(q, [c])[0]
    with torch.inference_mode():
        logits = s.model(**plain_inputs(s, q, c)).logits[0, -1].float()
    t, f = answer_token_ids(s.tokenizer, s.family, load_prompt("text_to_image").answer_words)
    p = F.softmax(logits, -1)
    assert got.value == pytest.approx(torch.sigmoid(logits[t] - logits[f]).item(), abs=1e-6)
    assert got.p_true == pytest.approx(p[t].item(), abs=1e-6)
    assert got.entropy == pytest.approx(-(p * p.clamp_min(1e-45).log()).sum().item(), abs=1e-4)


def _probe_entropies(s: HFScorer, q: Query, cs: list[Candidate], layer: int) -> list[float]:
    out = []
    for c in cs:
        with torch.inference_mode():
            hs = s.model(**plain_inputs(s, q, c), output_hidden_states=True).hidden_states
            top = s.lm_head(hs[layer + 1][0, -1]).float().topk(10).values
        lp = F.log_softmax(top, -1)
        out.append((-(lp.exp() * lp).sum() / math.log(10)).item())
    return out


@pytest.mark.parametrize("fam", FAMS)
@pytest.mark.parametrize("mode", ["off", "forced", "mixed"])
def test_batched_equals_one_by_one(tiny_vlm_dirs, candidate_images, fam: str, mode: str) -> None:
    q = Query(text="a green triangle")
    cs = cands(candidate_images)
    retrace = OFF
    if mode == "forced":
        retrace = RetraceConfig(start=0, end=3, threshold=-1.0)
    elif mode == "mixed":
        # A threshold between the samples' layer-1 entropies: some fire at layer 2, others later or never.
        ents = sorted(_probe_entropies(scorer(tiny_vlm_dirs, fam, vision_cache_size=0), q, cs, 1))
        retrace = RetraceConfig(start=0, end=3, threshold=(ents[2] + ents[3]) / 2)
    s = scorer(tiny_vlm_dirs, fam, retrace, batch_size=6)
    batched = s.score(q, cs)
    one = scorer(tiny_vlm_dirs, fam, retrace, batch_size=1, vision_cache_size=0)  # no features shared with `s`
    single = [one.score(q, [c])[0] for c in cs]
    for field in ("value", "p_true", "entropy"):
        assert max_diff(batched, single, field) <= 1e-5, field
    assert [b.retraced for b in batched] == [x.retraced for x in single]
    if mode == "forced":
        assert all(b.retraced == 2 for b in batched)
    if mode == "mixed":
        assert len({b.retraced for b in batched}) > 1


def reference_logits(s: HFScorer, inputs: dict, cfg: RetraceConfig) -> tuple[torch.Tensor, int | None]:
    """METHOD.md §3 written out plainly, batch 1: probe with the LM head over ALL positions (as the research
    code does) on the hidden states of an unmodified pass, then re-run with the armed layer's MLP replaced."""
    model, tm = s.model, s.text_model
    layers = list(tm.layers)
    with torch.inference_mode():
        out = model(**inputs, output_hidden_states=True, use_cache=False)
        hs = out.hidden_states
        armed = None
        for li in range(len(layers)):
            if cfg.start < li < cfg.end:
                h = hs[li + 1][0]
                if cfg.final_norm:
                    h = tm.norm(h)
                logits_all = s.lm_head(h)
                top = logits_all[-1].topk(cfg.top_k).values
                p = torch.softmax(top, -1)
                ent = -(p * torch.log(p)).sum() / math.log(cfg.top_k)
                if ent > cfg.threshold:
                    armed = li + 1
                    break
        if armed is None or armed >= len(layers):
            return out.logits[0, -1].float(), None
        v = hs[0][0]
        if cfg.v_rows == "image":
            v = v[inputs["input_ids"][0] == model.config.image_token_id]
        w_gate = layers[armed].mlp.gate_proj.weight

        def hook(_m, args, output):
            x, o = args[0][0], output[0]
            sc = w_gate.abs().mean() / v.abs().mean()
            a = F.silu(x @ (sc * v).T) @ v
            a = (o.abs().mean() / a.abs().mean()) * a
            return ((1 - cfg.ratio) * o + cfg.ratio * a)[None]

        handle = layers[armed].mlp.register_forward_hook(hook)
        try:
            return model(**inputs, use_cache=False).logits[0, -1].float(), armed
        finally:
            handle.remove()


@pytest.mark.parametrize("fam", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
@pytest.mark.parametrize(
    "cfg",
    [
        RetraceConfig(start=0, end=3, threshold=-1.0),
        RetraceConfig(start=0, end=3, threshold=2.0),
        RetraceConfig(start=0, end=3, threshold=-1.0, v_rows="image", final_norm=True, ratio=0.3),
        RetraceConfig(start=1, end=3, threshold=-1.0, top_k=5),
    ],
    ids=["forced-on", "forced-off", "image-rows+norm", "window+topk"],
)
def test_retracing_equals_reference(tiny_vlm_dirs, candidate_images, fam: str, cfg: RetraceConfig) -> None:
    s = scorer(tiny_vlm_dirs, fam, cfg, vision_cache_size=0)
    q = Query(text="a yellow star")
    for c in cands(candidate_images, 3):
        inputs = plain_inputs(s, q, c)
        ref, armed = reference_logits(s, inputs, cfg)
        got, fired = s._forward([s._chat_text(s._pair(q, None, c)[0])], [[s.load(c.image)]])
        assert fired == [armed]
        assert (got[0] - ref).abs().max().item() <= 1e-5
    if cfg.threshold < 0:
        assert armed is not None


def test_the_window_stops_before_layer_end(tiny_vlm_dirs, candidate_images) -> None:
    """``start < l < end``: with ``end`` below the last layer and a threshold that only the entropy after layer
    ``end`` exceeds, nothing fires; one layer more and it fires (at ``end + 1``). The tiny models have 4 layers, so
    ``end=3`` (the other tests) cannot tell ``l < end`` from ``l <= end``: layer 3 has no next layer to arm."""
    s = scorer(tiny_vlm_dirs, "qwen2_5_vl", vision_cache_size=0)
    q, cs = Query(text="a yellow star"), cands(candidate_images)
    after1, after2 = _probe_entropies(s, q, cs, 1), _probe_entropies(s, q, cs, 2)
    gap, i = max((e2 - e1, i) for i, (e1, e2) in enumerate(zip(after1, after2, strict=True)))
    assert gap > 2e-5, "the tiny model no longer has a sample whose entropy rises from layer 1 to layer 2"
    threshold, c = (after1[i] + after2[i]) / 2, cs[i]  # exceeded after layer 2 only
    for end, want in ((2, None), (3, 3)):
        cfg = RetraceConfig(start=0, end=end, threshold=threshold)
        s = scorer(tiny_vlm_dirs, "qwen2_5_vl", cfg, vision_cache_size=0)
        assert s.score(q, [c])[0].retraced == want, end
        ref, armed = reference_logits(s, plain_inputs(s, q, c), cfg)
        got, fired = s._forward([s._chat_text(s._pair(q, None, c)[0])], [[s.load(c.image)]])
        assert fired == [armed] == [want] and (got[0] - ref).abs().max().item() <= 1e-5


def test_hooks_leave_no_state_behind(tiny_vlm_dirs, candidate_images) -> None:
    s = scorer(tiny_vlm_dirs, "qwen2_vl", RetraceConfig(start=0, end=3, threshold=-1.0), vision_cache_size=0)
    q, c = Query(text="a red circle"), cands(candidate_images, 1)[0]
    inputs = plain_inputs(s, q, c)
    with torch.inference_mode():
        before = s.model(**inputs).logits[0, -1]
    first = s.score(q, [c])[0]
    assert first.retraced == 2
    for m in s.model.modules():
        assert not m._forward_hooks and not m._forward_pre_hooks
    with torch.inference_mode():
        after = s.model(**inputs).logits[0, -1]
    assert torch.equal(before, after)
    assert s.score(q, [c])[0].value == first.value


def tower(s: HFScorer) -> torch.nn.Module:
    return s.model.model.visual if hasattr(s.model.model, "visual") else s.model.model.vision_model


def tower_units(s: HFScorer, p: Path) -> int:
    """What the vision tower processes for one image: patch rows (Qwen) or tiles (Idefics3)."""
    px = s.processor.image_processor(images=[[s.load(str(p))]], return_tensors="pt")
    return int(px["image_grid_thw"].prod()) if "image_grid_thw" in px else int(px["pixel_values"].shape[1])


def watch_tower(s: HFScorer, seen: list[int]) -> Any:
    def hook(_m: Any, args: tuple, kwargs: dict) -> None:
        seen.append((args[0] if args else kwargs["pixel_values"]).shape[0])

    return tower(s).register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("fam", FAMS)
def test_vision_cache_skips_the_tower_and_changes_nothing(tiny_vlm_dirs, candidate_images, fam: str) -> None:
    cs = cands(candidate_images, 4)
    cached = scorer(tiny_vlm_dirs, fam, vision_cache_size=3)
    plain = scorer(tiny_vlm_dirs, fam, vision_cache_size=0)
    assert plain.vision_cache is None
    calls: list[int] = []
    handle = watch_tower(cached, calls)
    q1, q2 = Query(text="a red circle"), Query(text="a blue square")
    first = cached.score(q1, cs)
    n_calls = len(calls)
    second = cached.score(q2, cs[1:])  # all three most recent images are cached
    handle.remove()
    assert len(calls) == n_calls, "vision tower ran for cached images"
    assert cached.vision_cache.hits == 3 and len(cached.vision_cache) == 3
    assert max_diff(first, plain.score(q1, cs), "value") <= 1e-5
    assert max_diff(second, plain.score(q2, cs[1:]), "value") <= 1e-5


@pytest.mark.parametrize("fam", ["qwen2_vl", "qwen3_vl", "idefics3_split", "smolvlm"])
def test_an_image_query_goes_through_the_tower_once_per_batch(tiny_vlm_dirs, candidate_images, fam: str) -> None:
    """Image->image: the query image is in every pair; the tower sees it once, even with a tiny cache."""
    cs = cands(candidate_images[1:], 4)
    q = Query(image=str(candidate_images[0]))
    cached = scorer(tiny_vlm_dirs, fam, vision_cache_size=2, batch_size=4)  # smaller than the batch's new images
    rows: list[int] = []
    handle = watch_tower(cached, rows)
    got = cached.score(q, cs)
    handle.remove()
    assert len(rows) == 1 and rows[0] == sum(tower_units(cached, p) for p in candidate_images[:5])  # 5, not 8
    want = scorer(tiny_vlm_dirs, fam, vision_cache_size=0, batch_size=1).score(q, cs)
    assert max_diff(got, want, "value") <= 1e-5 and max_diff(got, want, "entropy") <= 1e-4
    starved = scorer(tiny_vlm_dirs, fam, vision_cache_mb=1e-6, batch_size=4)  # no entry fits: nothing is kept
    rows.clear()
    handle = watch_tower(starved, rows)
    again = starved.score(q, cs)
    handle.remove()
    assert starved.vision_cache is not None and len(starved.vision_cache) == 0 and len(rows) == 1
    assert max_diff(again, want, "value") <= 1e-5


@pytest.mark.parametrize("fam", ["qwen2_vl", "idefics3", "idefics3_split", "smolvlm"])
def test_image_side_shrinks_what_the_tower_sees(tiny_vlm_dirs, tmp_path: Path, fam: str) -> None:
    """RETLLM_SCORER_IMAGE_SIDE: fewer patches (Qwen) or fewer tiles (Idefics3/SmolVLM), same contract."""
    import numpy as np
    from PIL import Image

    big = []
    for i, size in enumerate([(160, 120), (90, 200), (140, 140), (300, 100)]):
        big.append(tmp_path / f"big{i}.png")
        Image.fromarray(np.random.default_rng(i).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(big[-1])
    cs = cands(big)
    q = Query(text="a red circle")
    seen: dict[str, int] = {}
    for name, side in (("model's own", None), ("small", 56 if fam == "qwen2_vl" else 28)):
        s = scorer(tiny_vlm_dirs, fam, batch_size=4, vision_cache_size=0, image_side=side)
        rows: list[int] = []
        handle = watch_tower(s, rows)
        batched = s.score(q, cs)
        handle.remove()
        seen[name] = sum(rows)
        single = [s.score(q, [c])[0] for c in cs]
        assert max_diff(batched, single, "value") <= 1e-5 and all(b.method == "logits" for b in batched)
    assert seen["small"] < seen["model's own"] or fam == "idefics3"  # one 28-px view either way
    if fam != "qwen2_vl":
        assert seen["small"] == len(cs)  # one 28-px tile per image
    small = scorer(tiny_vlm_dirs, fam, image_side=28)
    assert small.choose(Query(image=str(big[0])), ["a", "b"]).method == "logits"
    large = scorer(tiny_vlm_dirs, fam, image_side=4096, vision_cache_size=0)  # never more than the model's own
    assert max_diff(large.score(q, cs), scorer(tiny_vlm_dirs, fam, vision_cache_size=0).score(q, cs), "value") <= 1e-6


def test_bad_candidate_falls_back_to_coarse(tiny_vlm_dirs, candidate_images, tmp_path: Path) -> None:
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG\r\n\x1a\nnope")
    cs = [*cands(candidate_images, 2), Candidate("bad", image=str(broken), coarse_score=0.42)]
    out = scorer(tiny_vlm_dirs, "qwen2_vl").score(Query(text="x"), cs)
    assert [o.method for o in out] == ["logits", "logits", "coarse"]
    assert out[2].value is None and "corrupt" in out[2].error


def test_text_candidates_and_image_queries(tiny_vlm_dirs, candidate_images) -> None:
    s = scorer(tiny_vlm_dirs, "qwen2_vl")
    texts = [Candidate("t1", text="a red circle"), Candidate("t2", text="a blue square")]
    assert all(o.method == "logits" for o in s.score(Query(image=str(candidate_images[0])), texts))
    assert all(o.method == "logits" for o in s.score(Query(text="red"), texts))
    mixed = s.score(Query(text="red", image=str(candidate_images[1])), cands(candidate_images, 2) + texts)
    assert len(mixed) == 4 and all(o.method == "logits" for o in mixed)


def test_answer_tokens_must_be_single_tokens(tiny_vlm_dirs) -> None:
    s = scorer(tiny_vlm_dirs, "qwen2_vl")
    with pytest.raises(ConfigError, match="need exactly one"):
        answer_token_ids(s.tokenizer, FAMILIES["qwen2_vl"], ("Truthfully yes",))
    assert s.answer_ids == answer_token_ids(s.tokenizer, s.family, ("True", "False"))  # from the prompt file


@pytest.mark.parametrize("fam", FAMS)
def test_listwise_choice_from_option_logits(tiny_vlm_dirs, candidate_images, fam: str) -> None:
    from retllm.scorers.base import position_bias

    s = scorer(tiny_vlm_dirs, fam)
    q = Query(image=str(candidate_images[0]))
    options = ["a red circle", "a blue square", "a green triangle"]
    c = s.choose(q, options, seed=1)
    assert (
        c.method == "logits"
        and sum(c.probs) == pytest.approx(1.0)
        and c.index == max(range(3), key=c.probs.__getitem__)
    )
    same = s.choose(q, [options[i] for i in c.order], seed=None)  # the shown order, unshuffled: same numbers
    assert [same.probs[j] for j in range(3)] == pytest.approx([c.probs[i] for i in c.order], abs=1e-6)
    bias = position_bias(s, q, options, trials=4)
    trials = [s.choose(q, options, seed=t) for t in range(4)]  # position_bias's trials, recomputed
    assert bias["choices"] == [t.index for t in trials]
    positions = [0, 0, 0]
    for t in trials:
        positions[t.order.index(t.index)] += 1
    assert bias["positions"] == positions
    assert bias["consistency"] == max(map(bias["choices"].count, set(bias["choices"]))) / 4
    avg = s.choose(q, options, seed=1, rounds=3)  # every option in every slot once: the mean of three orders
    assert avg.order == c.order and [sorted(o) for o in avg.orders] == [[0, 1, 2]] * 3
    assert len({tuple(o) for o in avg.orders}) == 3 and {o[0] for o in avg.orders} == {0, 1, 2}
    each = [s.choose(q, [options[i] for i in o], seed=None) for o in avg.orders]
    mean = [sum(e.probs[o.index(i)] for e, o in zip(each, avg.orders, strict=True)) / 3 for i in range(3)]
    assert avg.probs == pytest.approx(mean, abs=1e-6) and avg.method == "logits"


def test_mixed_text_and_image_candidates_in_one_call(tiny_vlm_dirs, candidate_images) -> None:
    """Pairs with and without images never share a forward; image-row retracing skips text-only pairs."""
    cfg = RetraceConfig(start=0, end=3, threshold=-1.0, v_rows="image")
    s = scorer(tiny_vlm_dirs, "qwen2_vl", cfg, batch_size=8)
    cs = [Candidate("t0", text="a red circle"), *cands(candidate_images, 2), Candidate("t1", text="a dog")]
    out = s.score(Query(text="red"), cs)
    assert [o.method for o in out] == ["logits"] * 4
    assert [o.retraced for o in out] == [None, 2, 2, None]
    single = [s.score(Query(text="red"), [c])[0] for c in cs]
    assert max_diff(out, single, "value") <= 1e-5


# --- bounded work per request (issue 18, item 3) -------------------------------------------------------------


def test_a_cancelled_search_stops_the_local_scorer_within_a_batch(tiny_vlm_dirs) -> None:
    import threading

    from retllm.errors import Cancelled

    s = scorer(tiny_vlm_dirs, "qwen2_vl", batch_size=1)
    cancel = threading.Event()
    forwards = []

    def hang_up_at_the_first_forward(_module: Any, _args: Any) -> None:
        forwards.append(1)
        cancel.set()  # the client leaves while the first batch runs

    cs = [Candidate(f"t{i}", text=f"caption number {i}") for i in range(6)]
    hook = s.model.register_forward_pre_hook(hang_up_at_the_first_forward)
    try:
        with pytest.raises(Cancelled, match="the caller went away"):
            s.score(Query(text="a red circle"), cs, cancel=cancel)
    finally:
        hook.remove()
    assert 1 <= len(forwards) <= 2  # the batch running when it was cancelled, not the other 5 pairs
    assert s._worker.batches == len(forwards)
    assert [o.method for o in s.score(Query(text="a red circle"), cs)] == ["logits"] * 6  # serves the next one


def test_a_long_query_is_cut_to_max_query_tokens(tiny_vlm_dirs, caplog: pytest.LogCaptureFixture) -> None:
    s = scorer(tiny_vlm_dirs, "qwen2_vl", max_query_tokens=16)
    lengths = []
    hook = s.model.register_forward_pre_hook(
        lambda _m, _a, kw: lengths.append(kw["input_ids"].shape[1]), with_kwargs=True
    )
    long = "a red circle on a white wall " * 3000
    cut = s.cut_text(long, 16)
    try:
        with caplog.at_level("WARNING"):
            got = s.score(Query(text=long), [Candidate("t", text="a circle")])[0]
        ref = s.score(Query(text=cut), [Candidate("t", text="a circle")])[0]
    finally:
        hook.remove()
    assert len(s.tokenizer(cut, add_special_tokens=False)["input_ids"]) == 16 and long.startswith(cut)
    assert lengths[0] == lengths[1] < 100  # the model saw the cut query, not 21,000 tokens
    assert got.value == ref.value
    assert "RETLLM_MAX_QUERY_TOKENS" in caplog.text and "cut" in caplog.text
