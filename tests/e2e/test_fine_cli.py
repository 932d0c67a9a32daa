"""`retllm search` and `retllm demo` with the fine stage: a tiny local MLLM, and a local OpenAI-compatible server."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.cli import run
from tests.fakes.openai_server import Switches, fake_openai


def _ingest(env: dict[str, str], images: list[Path]) -> None:
    r = run(["index", "add", *map(str, images)], env)
    assert r.returncode == 0, r.stderr


def test_search_reranks_with_local_mllm(cli_env, tiny_vlm_dirs, candidate_images) -> None:
    env = {
        **cli_env,
        "RETLLM_SCORER": f"hf:{tiny_vlm_dirs['qwen2_vl']}",
        "RETLLM_RETRACE__START": "0",
        "RETLLM_RETRACE__END": "3",
        "RETLLM_RETRACE__THRESHOLD": "-1",
    }
    _ingest(env, candidate_images)
    r = run(["search", "a red circle", "-k", "5", "--top", "3", "--json"], env)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert len(hits) == 3 and [h["rank"] for h in hits] == [1, 2, 3]
    for h in hits:
        assert {"score", "p_true", "entropy", "method", "retraced", "revisits"} <= set(h)
        assert h["method"] == "logits" and h["retraced"] == 2 and 0 < h["score"] < 1
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    coarse = json.loads(run(["search", "a red circle", "-k", "5", "--coarse-only", "--json"], env).stdout)
    assert all(h["score"] is None for h in coarse)
    table = run(
        ["search", "a red circle", "-k", "3", "--scorer", f"hf:{tiny_vlm_dirs['qwen2_5_vl']}"],
        {**env, "COLUMNS": "250", "RETLLM_SCORER": "nope:x"},
    )
    assert "re-ranked by" in table.stdout and "L2" in table.stdout


def test_search_with_openai_endpoint_and_revisits(cli_env, candidate_images) -> None:
    with fake_openai(Switches(tool_call_first=True)) as fake:
        env = {**cli_env, "RETLLM_SCORER": "openai:fake-vlm", "RETLLM_OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": "k"}
        _ingest(env, candidate_images[:4])
        r = run(["search", "a red circle", "-k", "4", "--json"], env)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert all(h["method"] == "logprobs" and h["revisits"] == 1 for h in hits)


def test_transient_faults_fall_back_per_pair_and_rank_last(cli_env, candidate_images) -> None:
    with fake_openai(Switches(fail_5xx=2)) as fake:
        env = {
            **cli_env,
            "RETLLM_SCORER": "openai:fake-vlm",
            "RETLLM_OPENAI_BASE_URL": fake.url,
            "RETLLM_OPENAI_RETRIES": "0",
            "RETLLM_OPENAI_CONCURRENCY": "1",
        }
        _ingest(env, candidate_images[:4])
        r = run(["search", "x", "-k", "4", "--json"], env)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert [h["method"] for h in hits] == ["logprobs", "logprobs", "coarse", "coarse"]
    assert [h["coarse_rank"] for h in hits[2:]] == [1, 2] and all(h["score"] is None and h["error"] for h in hits[2:])


def test_every_pair_failing_fails_the_search(cli_env, candidate_images) -> None:
    with fake_openai(Switches(fail_5xx=1000)) as fake:
        env = {**cli_env, "RETLLM_SCORER": "openai:fake-vlm", "RETLLM_OPENAI_BASE_URL": fake.url}
        _ingest(env, candidate_images[:3])
        r = run(["search", "x", "-k", "3", "--json"], {**env, "RETLLM_OPENAI_RETRIES": "0"})
    assert r.returncode == 1 and r.stdout == ""
    assert "the fine stage failed for all 3 pair(s)" in r.stderr and len(r.stderr.strip().splitlines()) == 1


@pytest.mark.slow  # CLI subprocesses with a local MLLM: CI's slow pass
def test_configuration_errors_are_loud(cli_env, candidate_images) -> None:
    """A wrong key or an unknown model: exit 1 with one actionable line, never a silent coarse ranking."""
    with fake_openai(Switches(api_key="sk-right", models=["served-vlm"])) as fake:
        env = {**cli_env, "RETLLM_OPENAI_BASE_URL": fake.url, "OPENAI_API_KEY": "sk-wrong"}
        _ingest(env, candidate_images[:3])
        r = run(["search", "x", "-k", "3", "--scorer", "openai:served-vlm"], env)
        assert r.returncode == 1 and "HTTP 401" in r.stderr and "OPENAI_API_KEY" in r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        r = run(["search", "x", "-k", "3", "--scorer", "openai:typo-vlm"], {**env, "OPENAI_API_KEY": "sk-right"})
        assert r.returncode == 1 and "model 'typo-vlm' not found" in r.stderr and "available: served-vlm" in r.stderr
        r = run(
            ["search", "x", "-k", "3", "--json", "--scorer", "openai:served-vlm"], {**env, "OPENAI_API_KEY": "sk-right"}
        )
        assert r.returncode == 0 and all(h["method"] == "logprobs" for h in json.loads(r.stdout))


@pytest.mark.slow  # CLI subprocesses with a local MLLM: CI's slow pass
def test_min_score_can_return_nothing(cli_env, candidate_images) -> None:
    with fake_openai() as fake:
        env = {**cli_env, "RETLLM_SCORER": "openai:fake-vlm", "RETLLM_OPENAI_BASE_URL": fake.url}
        _ingest(env, candidate_images[:5])
        every = json.loads(run(["search", "x", "-k", "5", "--json"], env).stdout)
        cut = sorted(h["score"] for h in every)[2]
        r = run(["search", "x", "-k", "5", "--json", "--min-score", str(cut)], env)
        kept = json.loads(r.stdout)
        assert [h["id"] for h in kept] == [h["id"] for h in every if h["score"] >= cut] and len(kept) == 3
        assert [h["rank"] for h in kept] == [1, 2, 3]
        r = run(["search", "x", "-k", "5", "--min-score", "0.999"], {**env, "COLUMNS": "200"})
        assert r.returncode == 0 and "no hit reached --min-score 0.999" in r.stderr
        r = run(["search", "x", "-k", "5", "--json"], {**env, "RETLLM_MIN_SCORE": "0.999"})
        assert r.returncode == 0 and json.loads(r.stdout) == []
        r = run(["search", "x", "--coarse-only", "--min-score", "0.5"], env)
        assert r.returncode == 1 and "cannot be used with --coarse-only" in r.stderr


@pytest.mark.slow  # CLI subprocesses with a local MLLM: CI's slow pass
def test_demo_shows_coarse_and_reranked_side_by_side(cli_env, tiny_vlm_dirs) -> None:
    env = {**cli_env, "RETLLM_SCORER": f"hf:{tiny_vlm_dirs['idefics3']}"}
    r = run(["demo", "-k", "3"], env)
    assert r.returncode == 0, r.stderr
    assert "coarse order" in r.stdout and "re-ranked order" in r.stdout
    assert "the MLLM sees the scenes at up to 512 px" in r.stderr
    r = run(["demo", "-k", "2"], {**env, "RETLLM_SCORER_IMAGE_SIDE": "256"})  # an explicit setting wins
    assert r.returncode == 0 and "sees the scenes" not in r.stderr, r.stderr


@pytest.mark.slow  # CLI subprocesses with a local MLLM: CI's slow pass
def test_unknown_scorer_and_offline_scorer_fail_fast(cli_env, candidate_images, tmp_path) -> None:
    _ingest(cli_env, candidate_images[:1])
    r = run(["search", "x"], {**cli_env, "RETLLM_SCORER": "nope:model"})
    assert r.returncode == 1 and "unknown scorer provider 'nope'; valid: hf, openai" in r.stderr
    r = run(["search", "x"], {**cli_env, "HF_HOME": str(tmp_path / "empty")})  # default hub scorer, offline
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "hf:HuggingFaceTB/SmolVLM-256M-Instruct is not cached and offline mode is on" in r.stderr


@pytest.mark.slow  # CLI subprocesses with a local MLLM: CI's slow pass
def test_html_gallery_of_search_and_demo(cli_env, tiny_vlm_dirs, candidate_images, tmp_path) -> None:
    import re

    env = {**cli_env, "RETLLM_SCORER": f"hf:{tiny_vlm_dirs['qwen2_vl']}"}
    _ingest(env, candidate_images[:4])
    page = tmp_path / "g" / "search.html"
    r = run(["search", "<script>alert(1)</script>", "-k", "4", "--html", str(page)], env)
    assert r.returncode == 0, r.stderr
    text = page.read_text()
    assert len(re.findall(r"<figure>", text)) == 4
    assert len(re.findall(r'src="data:image/jpeg;base64,', text)) == 4
    assert "<script>" not in text and "&lt;script&gt;" in text  # untrusted query text is escaped
    r = run(["demo", "-k", "2"], env)
    demo_page = Path(env["RETLLM_DATA_DIR"]) / "demo.html"
    assert r.returncode == 0 and demo_page.is_file()
    assert demo_page.read_text().count("<figure>") == 5 * 2 * 2  # 5 queries x (coarse, re-ranked) x k
