"""OpenAIScorer errors and shared use: what falls back per pair, what fails the search, one request limit."""

from __future__ import annotations

import json
import time
from pathlib import Path

import openai
import pytest

from retllm.errors import EndpointError, ScoringError
from retllm.scorers.base import Candidate, check_not_all_failed
from retllm.scorers.chat import logprobs_cap
from retllm.scorers.openai import OpenAIScorer
from retllm.types import Query
from tests.fakes.openai_server import Switches, fake_openai
from tests.threads import run_threads


def make(url: str, key: str = "test", model: str = "fake-vlm", **kw) -> OpenAIScorer:
    client = openai.OpenAI(base_url=url, api_key=key, timeout=kw.pop("timeout", 5.0))
    kw.setdefault("backoff_base", 0.05)
    kw.setdefault("revisit", "off")
    return OpenAIScorer(client, model, **kw)


def texts(n: int, marker: str = "") -> list[Candidate]:
    return [Candidate(f"t{i}", text=f"caption {i}{marker if i == 1 else ''}", coarse_score=0.5) for i in range(n)]


def test_a_wrong_api_key_fails_the_search_with_one_actionable_line() -> None:
    with fake_openai(Switches(api_key="right")) as fake:
        with pytest.raises(EndpointError) as e:
            make(fake.url, key="wrong", concurrency=2).score(Query(text="q"), texts(6))
        n_requests = len(fake.requests)
    msg = str(e.value)
    assert "HTTP 401" in msg and "OPENAI_API_KEY" in msg and "\n" not in msg
    assert n_requests <= 3  # no retries, and the queued pairs were cancelled


def test_an_unknown_model_fails_and_lists_the_served_ones() -> None:
    with fake_openai(Switches(models=["qwen2.5-vl", "llava"])) as fake:
        with pytest.raises(EndpointError, match=r"model 'gpt-x' not found .*HTTP 404.*available: llava, qwen2.5-vl"):
            make(fake.url, model="gpt-x").score(Query(text="q"), texts(3))
        assert make(fake.url, model="llava").score(Query(text="q"), texts(2))[0].method == "logprobs"


@pytest.mark.parametrize(
    ("switches", "match"),
    [
        (Switches(status=403), "HTTP 403"),
        (Switches(status=422), "HTTP 422"),
        (Switches(insufficient_quota=True), "quota exhausted"),
    ],
)
def test_other_non_transient_errors_fail_the_search(switches: Switches, match: str) -> None:
    with fake_openai(switches) as fake:
        t0 = time.perf_counter()
        with pytest.raises(EndpointError, match=match):
            make(fake.url, retries=3).score(Query(text="q"), texts(3))
        assert time.perf_counter() - t0 < 2.0  # not retried with back-off


def test_transient_faults_fall_back_per_pair_and_the_rest_is_scored() -> None:
    with fake_openai(Switches(fail_5xx=2)) as fake:
        out = make(fake.url, retries=0, concurrency=1).score(Query(text="q"), texts(5))
        assert len(fake.requests) == 5
    assert [s.method for s in out] == ["coarse", "coarse", "logprobs", "logprobs", "logprobs"]
    assert all("InternalServerError" in (s.error or "") for s in out[:2]) and out[0].value is None
    check_not_all_failed(out)  # some pairs were scored: the query stands


def test_every_pair_failing_fails_the_query() -> None:
    with fake_openai(Switches(fail_5xx=100)) as fake:
        out = make(fake.url, retries=0).score(Query(text="q"), texts(3))
    with pytest.raises(ScoringError, match="failed for all 3 pair"):
        check_not_all_failed(out)


def test_a_prompt_over_the_context_length_fails_only_its_pair() -> None:
    with fake_openai(Switches(too_long_marker="HUGE")) as fake:
        out = make(fake.url, retries=3).score(Query(text="q"), texts(3, marker=" HUGE"))
        assert len(fake.requests) == 3  # not retried
    assert [s.method for s in out] == ["logprobs", "coarse", "logprobs"]
    assert "context length" in out[1].error


def test_a_capped_top_logprobs_is_retried_with_the_cap() -> None:
    """vLLM started with --max-logprobs 5 refuses 20: ask for 5 instead of giving logprobs up."""
    with fake_openai(Switches(max_top_logprobs=5)) as fake:
        sc = make(fake.url, concurrency=1)
        out = sc.score(Query(text="q"), texts(3))
        asked = [b.get("top_logprobs") for b in fake.requests]
    assert [s.method for s in out] == ["logprobs"] * 3
    assert asked == [20, 5, 5, 5] and sc.top_logprobs == 5
    with fake_openai(Switches(max_top_logprobs=1)) as fake:  # too few to read both answers: verbalised
        out = make(fake.url, concurrency=1).score(Query(text="q"), texts(2))
    assert [s.method for s in out] == ["verbalized"] * 2


def test_logprobs_cap_parsing() -> None:
    assert logprobs_cap("Requested sample logprobs of 20, which is greater than max allowed: 5", 20) == 5
    msg = "Invalid 'top_logprobs': integer above maximum value. Expected a value <= 8, but got 20 instead."
    assert logprobs_cap(msg, 20) == 8
    assert logprobs_cap("top_logprobs is too large", 20) == 10  # no number given: halve
    assert logprobs_cap("logprobs is not supported", 20) is None
    assert logprobs_cap("Requested sample logprobs of 20, which is greater than max allowed: 1", 20) is None


def test_one_request_limit_for_the_whole_process(candidate_images: list[Path]) -> None:
    """Four threads querying two scorers of one endpoint: never more than `concurrency` requests in flight."""
    with fake_openai(Switches(delay=0.15)) as fake:
        a, b = make(fake.url, concurrency=3), make(fake.url, concurrency=3)
        scorers = (a, b, a, b)

        def query(i: int) -> None:
            assert all(s.method == "logprobs" for s in scorers[i].score(Query(text="q"), texts(6)))

        assert run_threads(query, 4) == [] and len(fake.requests) == 24
        assert fake.max_in_flight == 3


def test_concurrent_queries_score_as_sequential_ones(candidate_images: list[Path]) -> None:
    """8 threads x 10 queries on one scorer: every score equals the sequential run's, zero errors."""
    images = [Candidate(f"c{i}", image=str(p)) for i, p in enumerate(candidate_images)]
    queries = [(Query(text=f"query {q}"), images[q % 3 : q % 3 + 4]) for q in range(20)]
    queries += [(Query(text=f"text query {q}"), texts(4)) for q in range(60)]
    with fake_openai(Switches(delay=0.002)) as fake:
        sc = make(fake.url, concurrency=8)
        sequential = [sc.score(q, cs) for q, cs in queries]
        results: dict[int, list] = {}

        def worker(t: int) -> None:
            for j in range(t, len(queries), 8):
                results[j] = sc.score(*queries[j])

        errors = run_threads(worker, 8)
    assert errors == [] and len(results) == 80
    for j, want in enumerate(sequential):
        got = results[j]
        assert [(s.value, s.p_true, s.entropy, s.method) for s in got] == [
            (s.value, s.p_true, s.entropy, s.method) for s in want
        ]
    assert all(s.method == "logprobs" for r in sequential for s in r)


@pytest.mark.parametrize(
    ("status", "message"),
    [
        (413, "Request Entity Too Large"),  # nginx's default 1 MiB body limit against a large data URL
        (422, "`inputs` tokens + `max_new_tokens` must be <= 4096. Given: 9000 `inputs` tokens"),  # TGI
        (400, "the request exceeds the available context size, try increasing it"),  # llama.cpp server
    ],
)
def test_a_pair_too_large_for_the_server_fails_only_that_pair(status: int, message: str) -> None:
    with fake_openai(Switches(too_long_marker="HUGE", too_long_status=status, too_long_message=message)) as fake:
        out = make(fake.url, retries=3).score(Query(text="q"), texts(3, marker=" HUGE"))
        assert len(fake.requests) == 3  # not retried
    assert [s.method for s in out] == ["logprobs", "coarse", "logprobs"] and str(status) in out[1].error


def test_408_is_transient() -> None:
    with fake_openai(Switches(fail_5xx=1, fail_code=408)) as fake:
        out = make(fake.url, retries=2, concurrency=1).score(Query(text="q"), texts(2))
        assert len(fake.requests) == 3  # the 408 was retried
    assert [s.method for s in out] == ["logprobs", "logprobs"]


def test_an_endpoint_error_does_not_wait_for_pairs_backing_off() -> None:
    """Pair 0 is told to retry in 1.5 s; the others get a 403: the search fails at once, and the pair that was
    backing off sends nothing more, not even after its wait."""
    with fake_openai(Switches(rate_limit=1, retry_after=1.5, status=403, delay=0.05)) as fake:
        t0 = time.perf_counter()
        with pytest.raises(EndpointError, match="HTTP 403"):
            make(fake.url, retries=3, concurrency=4).score(Query(text="q"), texts(4))
        assert time.perf_counter() - t0 < 1.0
        time.sleep(2.0)  # past the Retry-After
        assert len(fake.requests) == 4


def test_pairs_queued_for_a_slot_leave_when_the_query_fails() -> None:
    """One slot: the first request's 403 fails the query; the pairs queued behind it never send theirs."""
    with fake_openai(Switches(status=403, delay=0.3)) as fake:
        with pytest.raises(EndpointError):
            make(fake.url, concurrency=1).score(Query(text="q"), texts(4))
        time.sleep(0.8)
        assert len(fake.requests) == 1


def test_a_server_that_returns_only_the_sampled_token_gets_verbalized_scores() -> None:
    """One listed token bounds nothing: reading it as logprobs would score every pair 0.5."""
    with fake_openai(Switches(sampled_only=True)) as fake:
        out = make(fake.url).score(Query(text="q"), texts(4))
    assert all(s.method == "verbalized" and s.value in (0.0, 1.0) for s in out)


def test_the_pixel_limit_reaches_the_endpoint_scorer(candidate_images: list[Path]) -> None:
    from retllm.images import ImageLimits

    big = max(candidate_images, key=lambda p: p.stat().st_size)
    with fake_openai() as fake:
        sc = make(fake.url, limits=ImageLimits(max_pixels=100))
        out = sc.score(Query(text="q"), [Candidate("big", image=str(big)), *texts(1)])
    assert out[0].method == "coarse" and "too large" in out[0].error and out[1].method == "logprobs"


def test_concurrent_pairs_learn_that_the_endpoint_cannot_fetch_urls(candidate_images: list[Path]) -> None:
    """8 threads x 10 queries sending image URLs to a server that cannot fetch them: every pair that was in
    flight when the first refusal came switches to data URLs too, and all scores equal the sequential run."""
    from retllm.images import ImageLimits
    from tests.fakes.http_files import serve_folder

    local = ImageLimits(allow_private=True)  # the file server is on loopback
    with serve_folder(candidate_images[0].parent) as base, fake_openai(Switches(reject_urls=True)) as fake:
        urls = [Candidate(f"u{i}", image=f"{base}/{p.name}") for i, p in enumerate(candidate_images)]
        queries = [(Query(text=f"q{j}"), urls[j % 3 : j % 3 + 4]) for j in range(80)]
        sequential = [make(fake.url, concurrency=8, send_image_urls=True, limits=local).score(*qc) for qc in queries]
        sc = make(fake.url, concurrency=8, send_image_urls=True, limits=local)
        results: dict[int, list] = {}

        def worker(t: int) -> None:
            for j in range(t, len(queries), 8):
                results[j] = sc.score(*queries[j])

        assert run_threads(worker, 8) == []
    for j, want in enumerate(sequential):
        assert [(s.value, s.method) for s in results[j]] == [(s.value, s.method) for s in want]
    assert all(s.method == "logprobs" for r in results.values() for s in r)


def test_a_query_image_url_survives_the_switch_to_data_urls(candidate_images: list[Path]) -> None:
    """The query image was read as a URL (no bytes) before the first refusal: later pairs fetch its bytes."""
    from retllm.images import ImageLimits
    from tests.fakes.http_files import serve_folder

    with serve_folder(candidate_images[0].parent) as base, fake_openai(Switches(reject_urls=True)) as fake:
        q = Query(image=f"{base}/{candidate_images[0].name}")
        cands = [Candidate(f"u{i}", image=f"{base}/{p.name}") for i, p in enumerate(candidate_images[1:])]
        for conc in (1, 4):
            sc = make(fake.url, concurrency=conc, send_image_urls=True, limits=ImageLimits(allow_private=True))
            out = sc.score(q, cands)
            assert [s.method for s in out] == ["logprobs"] * len(cands), [s.error for s in out]


@pytest.mark.parametrize(
    "message",
    [
        "Invalid content type. image_url is only supported by certain models.",  # OpenAI, a text model
        "Unsupported content type: 'image_url'",
    ],
)
def test_a_server_that_takes_no_images_fails_the_search_not_each_image_pair(
    candidate_images: list[Path], message: str
) -> None:
    """Such a 400 names the image, but no image pair can succeed: it must not pass as per-pair fallbacks
    beside scored text pairs."""
    sw = Switches(too_long_marker="image_url", too_long_message=message)
    with fake_openai(sw) as fake:
        mixed = [Candidate("t0", text="words"), Candidate("c0", image=str(candidate_images[0]))]
        with pytest.raises(EndpointError):
            make(fake.url).score(Query(text="q"), mixed)
        sc = make(fake.url, probe=False)  # without the probe, the pair's own request says the same
        with pytest.raises(EndpointError, match="only supported|Unsupported content"):
            sc.score(Query(text="q"), mixed)


def test_tgi_style_422s() -> None:
    """TGI refuses a large top_n_tokens and a long input with 422s: the first is a cap to retry with, the
    second this pair's problem."""
    with fake_openai(Switches(max_top_logprobs=5, cap_style="tgi")) as fake:
        sc = make(fake.url, concurrency=1)
        out = sc.score(Query(text="q"), texts(2))
    assert [s.method for s in out] == ["logprobs"] * 2 and sc.top_logprobs == 5
    msg = "Input validation error: `inputs` must have less than 4000 tokens. Given: 9000"
    with fake_openai(Switches(too_long_marker="HUGE", too_long_status=422, too_long_message=msg)) as fake:
        out = make(fake.url).score(Query(text="q"), texts(3, marker=" HUGE"))
    assert [s.method for s in out] == ["logprobs", "coarse", "logprobs"]


def test_a_body_limit_makes_the_images_smaller(tmp_path: Path) -> None:
    """A proxy's body limit (413) is met by re-encoding the images smaller, once for the whole scorer."""
    import numpy as np
    from PIL import Image

    big = tmp_path / "noise.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (600, 800, 3), dtype=np.uint8)).save(big)
    with fake_openai(Switches(max_body=1_200_000)) as fake:
        sc = make(fake.url, revisit="off")
        out = sc.score(Query(text="q"), [Candidate("big", image=str(big)), Candidate("big2", image=str(big))])
        sizes = [len(json.dumps(b)) for b in fake.pair_requests]
    assert [s.method for s in out] == ["logprobs", "logprobs"]
    assert sc.pixel_budget == 256 * 256 * 4 and max(sizes) > 1_200_000 and min(sizes) < 1_200_000
