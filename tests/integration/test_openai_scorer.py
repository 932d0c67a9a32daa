"""OpenAIScorer against a real local HTTP server speaking the chat-completions API."""

from __future__ import annotations

import json
import math
from pathlib import Path

import openai
import pytest

from retllm.errors import ConfigError, ScoringError
from retllm.scorers.base import Candidate
from retllm.scorers.chat import parse_logprobs, parse_verbalized
from retllm.scorers.openai import OpenAIScorer
from retllm.types import Query
from tests.fakes.openai_server import Switches, expected_p_true, fake_openai


def make(url: str, **kw) -> OpenAIScorer:
    client = openai.OpenAI(base_url=url, api_key="test", timeout=kw.pop("timeout", 5.0))
    kw.setdefault("backoff_base", 0.05)
    return OpenAIScorer(client, "fake-vlm", **kw)


def cands(paths: list[Path], n: int = 3) -> list[Candidate]:
    return [Candidate(f"c{i}", image=str(p), coarse_score=0.3 + i / 100) for i, p in enumerate(paths[:n])]


def expected(p: float) -> float:
    lt, lf = math.log(p * 0.9 + 0.05), math.log((1 - p) * 0.9)  # ' true' variant adds 0.05 to True's mass
    return 1 / (1 + math.exp(lf - lt))


def test_logprobs_give_two_way_scores(candidate_images) -> None:
    with fake_openai() as fake:
        out = make(fake.url, revisit="off").score(Query(text="a red circle"), cands(candidate_images))
        body = fake.pair_requests[0]
    assert body["max_tokens"] == 1 and body["logprobs"] is True and body["top_logprobs"] == 20
    img_part = body["messages"][0]["content"][0]
    assert img_part["type"] == "image_url" and img_part["image_url"]["url"].startswith("data:image/png;base64,")
    for s, p in zip(out, candidate_images[:3], strict=True):
        pt = expected_p_true(p.read_bytes())
        assert s.method == "logprobs" and s.revisits == 0 and s.error is None
        assert s.value == pytest.approx(expected(pt), abs=1e-9)
        assert s.p_true == pytest.approx(pt * 0.9 + 0.05, abs=1e-9)
        assert s.entropy > 0 and s.latency_s > 0


def test_missing_logprobs_fall_back_to_verbalised(candidate_images) -> None:
    with fake_openai(Switches(logprobs=False)) as fake:
        out = make(fake.url, revisit="off").score(Query(text="x"), cands(candidate_images))
    for s, p in zip(out, candidate_images, strict=False):
        assert s.method == "verbalized"
        assert s.value == (1.0 if expected_p_true(p.read_bytes()) >= 0.5 else 0.0)


def test_endpoint_rejecting_logprobs_is_remembered(candidate_images) -> None:
    with fake_openai(Switches(reject_logprobs=True)) as fake:
        sc = make(fake.url, revisit="off", concurrency=1)
        out = sc.score(Query(text="x"), cands(candidate_images))
        assert [s.method for s in out] == ["verbalized"] * 3
        assert len(fake.pair_requests) == 3 and sum(1 for b in fake.requests if b.get("logprobs")) == 1
        # one rejected request (the vision probe's first), then none asks for logprobs again


def test_garbage_answers_fall_back_to_coarse(candidate_images) -> None:
    with fake_openai(Switches(garbage=True)) as fake:
        out = make(fake.url, revisit="off").score(Query(text="x"), cands(candidate_images))
    assert all(s.method == "coarse" and "unparseable answer 'Maybe'" in s.error for s in out)
    assert [s.value for s in out] == [None, None, None]  # no fine score is claimed


def test_429_honours_retry_after(candidate_images) -> None:
    with fake_openai(Switches(rate_limit=2, retry_after=0.3)) as fake:
        out = make(fake.url, revisit="off", concurrency=1).score(Query(text="x"), [Candidate("t", text="a caption")])
        gaps = [b - a for a, b in zip(fake.times, fake.times[1:], strict=False)]
    assert out[0].method == "logprobs"
    assert len(gaps) == 2 and all(g >= 0.28 for g in gaps)  # a text pair: no capability probe before it


def test_5xx_retries_then_falls_back(candidate_images) -> None:
    with fake_openai(Switches(fail_5xx=2)) as fake:
        ok = make(fake.url, revisit="off", concurrency=1, retries=2).score(Query(text="x"), cands(candidate_images, 1))
    assert ok[0].method == "logprobs"
    with fake_openai(Switches(fail_5xx=100)) as fake:
        out = make(fake.url, revisit="off", retries=1).score(Query(text="x"), cands(candidate_images, 2))
    assert all(s.method == "coarse" and "InternalServerError" in s.error for s in out)


def test_timeouts_fall_back_per_pair(candidate_images) -> None:
    with fake_openai(Switches(delay=1.5)) as fake:
        out = make(fake.url, revisit="off", retries=0, timeout=0.3).score(Query(text="x"), cands(candidate_images, 2))
    assert all(s.method == "coarse" and "Timeout" in s.error for s in out)


def quadrant_images(folder: Path, n: int = 2) -> list[Path]:
    """Pictures whose four quadrants differ in colour (plus a gradient), so a crop can be told from another."""
    import numpy as np
    from PIL import Image

    out = []
    for i in range(n):
        arr = np.zeros((90, 120, 3), np.uint8)
        colours = [(200, 30, 30), (30, 200, 30), (30, 30, 200), (200, 200, 30)]
        for q, (r, c) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
            arr[r * 45 : (r + 1) * 45, c * 60 : (c + 1) * 60] = colours[(q + i) % 4]
        arr[:, :, 2] = np.clip(arr[:, :, 2].astype(int) + np.arange(120)[None, :] // 4, 0, 255)
        p = folder / f"quad_{i}.png"
        Image.fromarray(arr).save(p)
        out.append(p)
    return out


@pytest.mark.parametrize("box", [[0.5, 0.0, 1.0, 0.5], [0.0, 0.5, 0.5, 1.0], [0.25, 0.25, 0.75, 0.75]])
def test_revisit_tool_resends_the_region_the_model_asked_for(tmp_path: Path, box: list[float]) -> None:
    """The fake checks the image it gets back against its own crop of the original: a wrong region, a
    transposed box or the whole image instead of the crop changes the answer and fails the test."""
    imgs = quadrant_images(tmp_path)
    with fake_openai(Switches(tool_call_first=True, revisit_box=box)) as fake:
        out = make(fake.url, revisit="on", concurrency=1).score(Query(text="x"), cands(imgs, 2))
        first = fake.pair_requests[0]
        second = next(b for b in fake.pair_requests if len(b["messages"]) > 1)  # a follow-up after the revisit
        checks = list(fake.crop_checks)
    assert checks == [True, True]
    assert [s.revisits for s in out] == [1, 1] and all(s.method == "logprobs" for s in out)
    assert first["tools"][0]["function"]["name"] == "revisit_image" and first["max_tokens"] == 64
    roles = [m["role"] for m in second["messages"]]
    assert roles == ["user", "assistant", "tool", "user"]
    assert second["messages"][1]["content"] == ""  # never null: servers reject it in an echoed turn
    view = [p for p in second["messages"][3]["content"] if p["type"] == "image_url"]
    assert len(view) == 1 and view[0]["image_url"]["url"].startswith("data:image/png")
    assert "tools" not in second and second["max_tokens"] == 1  # revisits are bounded (max 1)
    for s, p in zip(out, imgs, strict=True):
        assert s.value == pytest.approx(expected(expected_p_true(p.read_bytes())), abs=1e-9)


def test_the_crop_check_tells_a_wrong_region_from_the_right_one(tmp_path: Path) -> None:
    """The fake's own check, so the revisit test above can fail: other quadrants and the whole image are refused."""
    import io

    from PIL import Image

    from tests.fakes.openai_server import crop_matches

    data = quadrant_images(tmp_path, 1)[0].read_bytes()
    im = Image.open(io.BytesIO(data))

    def png(view: Image.Image) -> bytes:
        buf = io.BytesIO()
        view.save(buf, "PNG")
        return buf.getvalue()

    right = png(im.crop((60, 0, 120, 45)).resize((240, 180)))
    assert crop_matches(data, right, [0.5, 0.0, 1.0, 0.5])
    assert not crop_matches(data, right, [0.0, 0.5, 0.5, 1.0])  # the transposed box
    assert not crop_matches(data, png(im), [0.5, 0.0, 1.0, 0.5])  # the whole image
    assert not crop_matches(data, png(im.crop((0, 0, 60, 45))), [0.5, 0.0, 1.0, 0.5])  # another quadrant


def test_endpoint_without_tools_turns_revisits_off(candidate_images) -> None:
    with fake_openai(Switches(tools=False)) as fake:
        sc = make(fake.url, revisit="auto", concurrency=1)
        out = sc.score(Query(text="x"), cands(candidate_images, 2))
    assert all(s.method == "logprobs" and s.revisits == 0 for s in out)
    assert sc._tools_state is False and len(fake.pair_requests) == 2 and "tools" not in fake.pair_requests[0]


def test_concurrency_is_bounded(candidate_images) -> None:
    with fake_openai(Switches(delay=0.2)) as fake:
        cs = [Candidate(f"t{i}", text=f"caption {i}") for i in range(12)]
        out = make(fake.url, concurrency=4).score(Query(text="q"), cs)
        assert 1 < fake.max_in_flight <= 4
    assert len(out) == 12 and all(s.method == "logprobs" for s in out)


def test_parsers_are_strict() -> None:
    assert parse_verbalized(" true.").value == 1.0
    assert parse_verbalized("False").value == 0.0
    for bad in ["True or False", "yes", "", None, "Truely"]:
        with pytest.raises(ScoringError):
            parse_verbalized(bad)
    s = parse_logprobs([("True", math.log(0.6)), ("Yes", math.log(0.3))])
    assert s.value == pytest.approx(0.6 / (0.6 + 0.1))  # False missing: at most the unlisted 0.1
    s = parse_logprobs([("True", math.log(0.3)), ("Yes", math.log(0.02)), ("No", math.log(0.01))])
    assert s.value == pytest.approx(0.3 / (0.3 + 4 * 0.01))  # ... and at most 4 spellings below the smallest
    with pytest.raises(ScoringError):
        parse_logprobs([("Yes", -0.1)])


OPTIONS = ["a cat on a mat", "a dog in the park", "two birds", "a red car"]


def test_listwise_reads_option_logprobs_and_undoes_the_shuffle() -> None:
    from retllm.scorers.base import position_bias
    from tests.fakes.openai_server import option_preference

    with fake_openai() as fake:
        sc = make(fake.url)
        c = sc.choose(Query(text="which one?"), OPTIONS, seed=3)
        assert c.method == "logprobs" and sorted(c.order) == [0, 1, 2, 3] and c.order != [0, 1, 2, 3]
        prefs = [option_preference(o) for o in OPTIONS]
        z = sum(math.exp(p) for p in prefs)
        assert c.probs == pytest.approx([math.exp(p) / z for p in prefs], abs=1e-9)
        assert c.index == max(range(4), key=prefs.__getitem__)
        bias = position_bias(sc, Query(text="which one?"), OPTIONS, trials=6)
        assert bias["consistency"] == 1.0 and len(set(bias["choices"])) == 1
    with fake_openai(Switches(position_bias=True)) as fake:
        bias = position_bias(make(fake.url), Query(text="which one?"), OPTIONS, trials=6)
        assert bias["positions"][0] == 6 and bias["consistency"] < 1.0


def test_listwise_rounds_cancel_a_slot_preference() -> None:
    """A model that favours the first slot picks the wrong caption in one round; both orders fix it."""
    from tests.fakes.openai_server import option_preference

    pos, neg = sorted(OPTIONS[:2], key=option_preference, reverse=True)
    gap = option_preference(pos) - option_preference(neg)
    bias = gap + 1.0  # bigger than the real preference: one round always picks the first slot

    def sig(x: float) -> float:
        return 1 / (1 + math.exp(-x))

    with fake_openai(Switches(slot_bias=bias)) as fake:
        sc = make(fake.url)
        one = sc.choose(Query(text="q"), [neg, pos], seed=None)
        assert one.index == 0  # fooled by the slot
        both = sc.choose(Query(text="q"), [neg, pos], seed=None, rounds=2)
        assert both.index == 1 and both.orders == [[0, 1], [1, 0]] and both.order == [0, 1]
        assert both.probs[1] == pytest.approx(0.5 * sig(gap - bias) + 0.5 * sig(gap + bias), abs=1e-9)
        assert sum(both.probs) == pytest.approx(1.0)
        with pytest.raises(ConfigError, match="rounds must be between 1 and the number of options"):
            sc.choose(Query(text="q"), [neg, pos], rounds=3)
        with pytest.raises(ConfigError, match="rounds must be between 1"):
            sc.choose(Query(text="q"), [neg, pos], rounds=0)


def test_listwise_verbalised_and_bounds() -> None:
    from retllm.errors import ConfigError

    with fake_openai(Switches(logprobs=False)) as fake:
        c = make(fake.url).choose(Query(text="q"), OPTIONS[:2], seed=None)
        assert c.method == "verbalized" and sorted(c.probs) == [0.0, 1.0]
        with pytest.raises(ConfigError, match="2 to 10 options"):
            make(fake.url).choose(Query(text="q"), ["only one"])


@pytest.mark.parametrize("reject", [False, True])
def test_http_images_as_urls_or_inlined_when_the_endpoint_cannot_fetch(candidate_images, reject: bool) -> None:
    from retllm.images import ImageLimits
    from tests.fakes.http_files import serve_folder

    folder = candidate_images[0].parent
    with serve_folder(folder) as base, fake_openai(Switches(reject_urls=reject)) as fake:
        urls = [f"{base}/{p.name}" for p in candidate_images[:2]]
        cs = [Candidate(f"u{i}", image=u) for i, u in enumerate(urls)]
        local = ImageLimits(allow_private=True)  # the file server is on loopback
        sc = make(fake.url, revisit="off", concurrency=1, send_image_urls=True, limits=local)
        out = sc.score(Query(text="x"), cs)
        sent = [b["messages"][0]["content"][0]["image_url"]["url"] for b in fake.pair_requests]
    assert all(s.method == "logprobs" for s in out)
    if not reject:
        assert sent == urls
        assert out[0].value == pytest.approx(expected(expected_p_true(urls[0].encode())), abs=1e-9)
    else:
        assert sent[0] == urls[0] and all(u.startswith("data:image/png") for u in sent[1:])
        assert sc.send_image_urls is False
        assert out[0].value == pytest.approx(expected(expected_p_true(candidate_images[0].read_bytes())), abs=1e-9)


def test_models_that_take_only_max_completion_tokens_and_no_temperature(candidate_images) -> None:
    with fake_openai(Switches(new_params_only=True)) as fake:
        out = make(fake.url, revisit="off", concurrency=1).score(Query(text="x"), cands(candidate_images, 2))
        last = fake.requests[-1]
    assert all(s.method == "logprobs" for s in out)
    assert last["max_completion_tokens"] == 1 and "max_tokens" not in last and "temperature" not in last


# --- bounded work per request (issue 18, item 3) -------------------------------------------------------------


def test_a_cancelled_search_sends_none_of_its_remaining_pairs() -> None:
    import threading
    import time

    from retllm.errors import Cancelled

    cs = [Candidate(f"t{i}", text=f"caption {i}") for i in range(8)]
    with fake_openai(Switches(delay=0.3)) as fake:
        sc = make(fake.url, revisit="off", concurrency=1)
        cancel = threading.Event()

        def hang_up() -> None:
            for _ in range(1000):  # bounded: until the first pair is on the wire
                if fake.pair_requests:
                    break
                time.sleep(0.01)
            cancel.set()

        threading.Thread(target=hang_up).start()
        with pytest.raises(Cancelled):
            sc.score(Query(text="x"), cs, cancel=cancel)
        for _ in range(1000):  # bounded: until the request on the wire has been answered
            if not fake.in_flight:
                break
            time.sleep(0.01)
        sent = len(fake.pair_requests)
        assert sc.score(Query(text="x"), cs[:2])[1].method == "logprobs"  # the scorer serves the next search
    assert 1 <= sent <= 2  # not the 8 the search had


def test_a_long_query_is_cut_by_a_token_estimate() -> None:
    with fake_openai() as fake:
        make(fake.url, revisit="off", max_query_tokens=32).score(
            Query(text="word " * 50_000), [Candidate("t", text="a")]
        )
        sent = json.dumps(fake.pair_requests[0]["messages"])
    assert 20 <= sent.count("word") <= 32 * 4 // 5 + 1  # 32 tokens at 4 characters each, not 50,000 words
