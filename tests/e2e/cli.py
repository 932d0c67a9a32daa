"""Run the real ``retllm`` console script as a subprocess."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

RETLLM = str(Path(sys.executable).with_name("retllm"))


def run(
    args: list[str], env: dict[str, str], *, timeout: float = 180, cwd: Path | None = None
) -> subprocess.CompletedProcess[str]:
    return subprocess.run([RETLLM, *args], env=env, capture_output=True, text=True, timeout=timeout, cwd=cwd)
