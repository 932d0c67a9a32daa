"""OpenAIScorer against the habits of real servers (issue 8), reproduced by the local fake endpoint:
text sent as a string, 500s that are client errors, tools ignored, images dropped, short top_logprobs."""

from __future__ import annotations

import math
import random
from pathlib import Path

import openai
import pytest

from retllm.errors import EndpointError
from retllm.scorers.base import Candidate, two_way
from retllm.scorers.chat import parse_logprobs
from retllm.scorers.openai import OpenAIScorer
from retllm.types import Query
from tests.fakes.openai_server import Switches, fake_openai


def make(url: str, **kw) -> OpenAIScorer:
    client = openai.OpenAI(base_url=url, api_key="test", timeout=5.0)
    kw.setdefault("backoff_base", 0.05)
    return OpenAIScorer(client, "fake-vlm", **kw)


def images(paths: list[Path], n: int = 2) -> list[Candidate]:
    return [Candidate(f"c{i}", image=str(p)) for i, p in enumerate(paths[:n])]


def test_text_only_messages_are_plain_strings(candidate_images: list[Path]) -> None:
    """llama.cpp's chatml drops list content silently and Qwen2.5 GGUF templates fail on it: a message without
    images goes as one string; one with images keeps its parts."""
    with fake_openai() as fake:
        sc = make(fake.url, revisit="off")
        sc.score(Query(text="a red circle"), [Candidate("t", text="a circle, red")])
        sc.score(Query(text="a red circle"), images(candidate_images, 1))
        text_req, image_req = fake.pair_requests
    content = text_req["messages"][0]["content"]
    assert isinstance(content, str) and "a red circle" in content and "a circle, red" in content
    assert isinstance(image_req["messages"][0]["content"], list)


def test_a_500_that_says_logprobs_are_unsupported_switches_to_verbalized_at_once() -> None:
    with fake_openai(Switches(logprobs_500=True)) as fake:
        out = make(fake.url, revisit="off", concurrency=1, retries=3).score(
            Query(text="q"), [Candidate(f"t{i}", text=f"c {i}") for i in range(3)]
        )
        n = len(fake.requests)
    assert [s.method for s in out] == ["verbalized"] * 3
    assert n == 4  # one refused request, not retried 4 times, then three without logprobs


def test_images_sent_to_a_text_only_server_fail_with_one_clear_line(candidate_images: list[Path]) -> None:
    with fake_openai(Switches(text_only=True)) as fake:  # images dropped without a word
        with pytest.raises(EndpointError, match=r"ignored an image .*is 'fake-vlm' a vision model"):
            make(fake.url).score(Query(text="q"), images(candidate_images))
        assert fake.pair_requests == []  # found out before any pair was sent
    with fake_openai(Switches(image_error_500=True)) as fake:  # a template that breaks on list content
        with pytest.raises(EndpointError, match="refused a request with an image"):
            make(fake.url, retries=3).score(Query(text="q"), images(candidate_images))
        assert len(fake.requests) == 2  # the probe pair, not retried
    with fake_openai(Switches(text_only=True)) as fake:  # text pairs are fine on such a server
        out = make(fake.url).score(Query(text="q"), [Candidate("t", text="words")])
    assert out[0].method == "logprobs"


@pytest.mark.parametrize(
    ("switches", "revisit", "offered"),
    [
        (Switches(ignore_tools=True), "auto", False),  # chatml and most GGUF templates: tools not rendered
        (Switches(tools=False), "auto", False),  # tools refused with a 400
        (Switches(), "auto", True),  # the prompt grows by the tool's schema: the model sees it
        (Switches(ignore_tools=True), "on", True),  # forced on by setting: no probe
        (Switches(), "off", False),
    ],
)
def test_tools_are_offered_only_where_tool_calls_work(
    candidate_images: list[Path], switches: Switches, revisit: str, offered: bool
) -> None:
    with fake_openai(switches) as fake:
        out = make(fake.url, revisit=revisit, concurrency=1).score(Query(text="q"), images(candidate_images, 3))
        pairs, every = fake.pair_requests, fake.requests
    assert all(s.method == "logprobs" for s in out)
    assert all(("tools" in b) == offered for b in pairs)
    assert all(b["max_tokens"] == (64 if offered else 1) for b in pairs)  # no 64-token budget for nothing
    tool_probes = [b for b in every if "tools" in b and "Capability check" in str(b["messages"])]
    assert len(tool_probes) == (1 if revisit == "auto" else 0)  # asked once per scorer, never when set


def test_the_missing_answer_bound_stays_sound_with_a_short_list() -> None:
    """Servers return fewer top_logprobs than asked (14-16 of 20: tokens that decode to "" collide). As long as
    the list is the top of the distribution, a missing answer is bounded by the smallest listed logprob: the
    score errs towards the missing answer, never away from it."""
    rng = random.Random(0)
    for _ in range(300):
        words = ["True", "False", " True", " false", *[f"w{i}" for i in range(40)]]
        logits = [rng.gauss(0, 2) for _ in words]
        z = math.log(sum(math.exp(x) for x in logits))
        lp = dict(zip(words, (x - z for x in logits), strict=True))
        top = sorted(lp.items(), key=lambda kv: -kv[1])[:20]
        kept = [kv for kv in top if not (kv[0].startswith("w") and rng.random() < 0.3)]  # collisions drop some
        lt = math.log(math.exp(lp["True"]) + math.exp(lp[" True"]))  # both spellings count
        lf = math.log(math.exp(lp["False"]) + math.exp(lp[" false"]))
        truth = two_way(lt, lf)
        listed = {t.strip().lower() for t, _ in kept}
        try:
            got = parse_logprobs(kept).value
        except Exception:  # noqa: BLE001 - neither answer listed, or nothing to bound with
            continue
        assert got is not None
        if "true" in listed and "false" in listed:
            assert got == pytest.approx(
                two_way(
                    math.log(sum(math.exp(v) for t, v in kept if t.strip().lower() == "true")),
                    math.log(sum(math.exp(v) for t, v in kept if t.strip().lower() == "false")),
                )
            )
        elif "true" in listed:
            assert got <= truth + 1e-12  # False missing: its mass bounded from above, P(True) from below
        else:
            assert got >= truth - 1e-12


@pytest.mark.parametrize("switches", [Switches(reject_logprobs=True), Switches(logprobs_500=True)])
def test_concurrent_pairs_learn_together_that_logprobs_are_refused(switches: Switches) -> None:
    """Eight pairs refused at once: each drops logprobs, none fails the search."""
    with fake_openai(switches) as fake:
        sc = make(fake.url, revisit="off", concurrency=8)
        out = sc.score(Query(text="q"), [Candidate(f"t{i}", text=f"caption {i}") for i in range(8)])
    assert [s.method for s in out] == ["verbalized"] * 8 and sc._logprobs_ok is False


def test_images_printed_as_text_fail_with_one_clear_line(candidate_images: list[Path]) -> None:
    """Llama-3 and Gemma templates print the content list, base64 and all: the prompt grows with the image's
    encoded size, not with its pixels. Two images of one size and different encoded length tell."""
    with fake_openai(Switches(images_as_text=True)) as fake:
        with pytest.raises(EndpointError, match="reads images as text"):
            make(fake.url).score(Query(text="q"), images(candidate_images))
        assert fake.pair_requests == []


def test_a_wrong_key_on_an_image_search_says_so_not_vision(candidate_images: list[Path]) -> None:
    with fake_openai(Switches(api_key="right")) as fake:
        client = openai.OpenAI(base_url=fake.url, api_key="wrong", timeout=5.0)
        with pytest.raises(EndpointError, match="HTTP 401") as e:
            OpenAIScorer(client, "fake-vlm").score(Query(text="q"), images(candidate_images))
    assert "vision model" not in str(e.value)


def test_a_transient_fault_leaves_a_probe_open_for_later(candidate_images: list[Path]) -> None:
    """The probes are not retried: a fault leaves the answer open and a later pair asks again; three faults
    in a row and the scorer goes on (images assumed readable, revisits off)."""
    sw = Switches(fail_5xx=1, faults_hit_probes=True, tool_call_first=True)
    with fake_openai(sw) as fake:
        sc = make(fake.url, revisit="auto", concurrency=1, retries=0)
        out = sc.score(Query(text="q"), images(candidate_images, 3))
    assert [s.method for s in out] == ["logprobs"] * 3
    assert sc._vision_state is True and sc._tools_state is True  # asked again after the fault, and answered
    with fake_openai(Switches(fail_5xx=100, faults_hit_probes=True)) as fake:
        sc = make(fake.url, revisit="auto", concurrency=1, retries=0)
        out = sc.score(Query(text="q"), images(candidate_images, 4))
    assert sc._vision_state is True and sc._tools_state is False
    assert all(s.method == "coarse" for s in out)  # the pairs themselves hit the outage too


def test_shrinking_for_a_body_limit_keeps_photos_as_jpeg(tmp_path: Path) -> None:
    """A photo re-encoded as PNG would grow: the smaller encoding is sent, and the budget keeps shrinking
    (a quarter at a time) until the body fits."""
    import numpy as np
    from PIL import Image

    y, x = np.mgrid[0:1000, 0:1000]
    photo = np.stack([(x * 0.25) % 256, (y * 0.2) % 256, ((x + y) * 0.1) % 256], -1)
    photo = (photo + np.random.default_rng(0).normal(0, 6, photo.shape)).clip(0, 255).astype(np.uint8)
    p = tmp_path / "photo.jpg"
    Image.fromarray(photo).save(p, quality=85)
    size = p.stat().st_size
    with fake_openai(Switches(max_body=int(size * 0.6))) as fake:
        sc = make(fake.url, revisit="off", concurrency=1)
        out = sc.score(Query(text="q"), [Candidate("a", image=str(p)), Candidate("b", image=str(p))])
        sent = [b["messages"][0]["content"][0]["image_url"]["url"][:16] for b in fake.pair_requests]
    assert [s.method for s in out] == ["logprobs", "logprobs"], [s.error for s in out]
    assert sc.pixel_budget < 1024 * 1024 and sent[-1] == "data:image/jpeg;"


def test_a_gateway_that_reports_usage_oddly_fails_naming_the_switch_and_searches_with_it_off(
    tmp_path: Path, embedder, candidate_images: list[Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The vision probe compares prompt tokens; a gateway reporting the same usage for every request looks like a
    server that drops images. The error names RETLLM_OPENAI_PROBE; with it off, searches work (no probe sent)."""
    from retllm.index.edge import EdgeIndex
    from retllm.ingest import Ingestor
    from retllm.pipeline import Retriever
    from retllm.registry import make_scorer
    from retllm.settings import Settings
    from retllm.types import Item
    from tests.fakes.openai_server import is_probe

    with EdgeIndex(tmp_path / "edge") as index, fake_openai(Switches(fixed_prompt_tokens=12)) as fake:
        Ingestor(embedder, index, "pics").add([Item(image=str(p)) for p in candidate_images])
        monkeypatch.setenv("RETLLM_OPENAI_BASE_URL", fake.url)
        monkeypatch.setenv("RETLLM_OPENAI_API_KEY", "k")
        monkeypatch.setenv("RETLLM_SCORER", "openai:fake-vlm")
        default = Retriever(embedder, index, "pics", scorer=make_scorer(Settings()))
        with pytest.raises(EndpointError) as e:
            default.search(Query(text="a picture"), k=3)
        msg = str(e.value)
        assert "ignored an image" in msg and "RETLLM_OPENAI_PROBE=off" in msg and "\n" not in msg
        assert fake.pair_requests == []
        monkeypatch.setenv("RETLLM_OPENAI_PROBE", "off")
        sent = len(fake.requests)
        off = Retriever(embedder, index, "pics", scorer=make_scorer(Settings()))
        hits = off.search(Query(text="a picture"), k=3, top=2)
        assert len(hits) == 2 and all(h.method == "logprobs" for h in hits)
        later = fake.requests[sent:]
        assert len(later) == 3 and not any(is_probe(b) for b in later)  # the three pairs, no probe
        assert not any("tools" in b for b in later)  # the documented assumption: no revisit tool unless REVISIT=on
