"""`retllm search` and `retllm demo` with the fine stage: a tiny local MLLM, and a local OpenAI-compatible server."""

from __future__ import annotations

import json
from pathlib import Path

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


def test_failing_endpoint_falls_back_to_coarse_order(cli_env, candidate_images) -> None:
    with fake_openai(Switches(fail_5xx=1000)) as fake:
        env = {
            **cli_env,
            "RETLLM_SCORER": "openai:fake-vlm",
            "RETLLM_OPENAI_BASE_URL": fake.url,
            "RETLLM_OPENAI_RETRIES": "0",
        }
        _ingest(env, candidate_images[:3])
        r = run(["search", "x", "-k", "3", "--json"], env)
    hits = json.loads(r.stdout)
    assert r.returncode == 0 and all(h["method"] == "coarse" and h["error"] for h in hits)
    assert [h["coarse_rank"] for h in hits] == [1, 2, 3]


def test_demo_shows_coarse_and_reranked_side_by_side(cli_env, tiny_vlm_dirs) -> None:
    env = {**cli_env, "RETLLM_SCORER": f"hf:{tiny_vlm_dirs['idefics3']}"}
    r = run(["demo", "-k", "3"], env)
    assert r.returncode == 0, r.stderr
    assert "coarse order" in r.stdout and "re-ranked order" in r.stdout
    assert "the MLLM sees the scenes at up to 512 px" in r.stderr
    r = run(["demo", "-k", "2"], {**env, "RETLLM_SCORER_IMAGE_SIDE": "256"})  # an explicit setting wins
    assert r.returncode == 0 and "sees the scenes" not in r.stderr, r.stderr


def test_unknown_scorer_and_offline_scorer_fail_fast(cli_env, candidate_images, tmp_path) -> None:
    _ingest(cli_env, candidate_images[:1])
    r = run(["search", "x"], {**cli_env, "RETLLM_SCORER": "nope:model"})
    assert r.returncode == 1 and "unknown scorer provider 'nope'; valid: hf, openai" in r.stderr
    r = run(["search", "x"], {**cli_env, "HF_HOME": str(tmp_path / "empty")})  # default hub scorer, offline
    assert r.returncode == 1 and len(r.stderr.strip().splitlines()) == 1
    assert "hf:HuggingFaceTB/SmolVLM-256M-Instruct is not cached and offline mode is on" in r.stderr


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
