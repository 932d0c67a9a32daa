"""Run the real ``retllm`` console script as a subprocess."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RETLLM = str(Path(sys.executable).with_name("retllm"))


def run(
    args: list[str], env: dict[str, str], *, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RETLLM, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)


def retllm_env(data_dir: Path, embedder: str, **settings: str) -> dict[str, str]:
    """This process's environment without its ``RETLLM_*`` variables, pointed at ``data_dir`` and the tiny
    ``embedder`` on the CPU, plus ``settings``: what every test that runs ``retllm`` starts from."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("RETLLM_")}
    env.update(RETLLM_DATA_DIR=str(data_dir), RETLLM_EMBEDDER=embedder, RETLLM_DEVICE="cpu", **settings)
    return env
