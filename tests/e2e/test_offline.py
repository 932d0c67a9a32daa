"""With no network and no cached weights every command fails in seconds with one actionable line."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from tests.data_gen import write_good_images
from tests.e2e.cli import run
from tests.fakes.http_files import silent_listener


@pytest.fixture
def bare_env(cli_env: dict[str, str], tmp_path: Path) -> dict[str, str]:
    env = dict(cli_env)
    env.pop("RETLLM_EMBEDDER")  # the default hub model
    env["HF_HOME"] = str(tmp_path / "empty-hf-home")
    return env


def _assert_fast_actionable(r, elapsed: float) -> None:
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    assert "open_clip:ViT-B-32@laion2b_s34b_b79k" in lines[0] and "RETLLM_EMBEDDER=open_clip:local-dir:" in lines[0]
    assert elapsed < 60, f"took {elapsed:.0f}s: a hang, not a fast failure"


def test_offline_mode_fails_fast(bare_env: dict[str, str], tmp_path: Path) -> None:
    write_good_images(tmp_path / "in", n=1)
    t = time.monotonic()
    r = run(["index", "add", str(tmp_path / "in")], bare_env)
    _assert_fast_actionable(r, time.monotonic() - t)
    assert "offline mode is on" in r.stderr


def test_black_holed_hub_fails_fast(bare_env: dict[str, str], tmp_path: Path) -> None:
    write_good_images(tmp_path / "in", n=1)
    env = {k: v for k, v in bare_env.items() if k not in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")}
    with silent_listener() as url:
        env["HF_ENDPOINT"] = url
        t = time.monotonic()
        r = run(["demo"], env)
        _assert_fast_actionable(r, time.monotonic() - t)
    assert "is unreachable" in r.stderr
