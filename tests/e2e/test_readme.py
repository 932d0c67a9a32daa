"""The README's Python example runs as written (against tiny local models)."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from PIL import Image

README = Path(__file__).resolve().parents[2] / "README.md"


def test_python_api_example_runs(cli_env: dict[str, str], tiny_vlm_dirs, tmp_path: Path) -> None:
    code = re.search(r"## Python API\s+```python\n(.*?)```", README.read_text(), re.S).group(1)
    Image.new("RGB", (40, 30), (200, 120, 40)).save(tmp_path / "cat.jpg")
    env = {**cli_env, "RETLLM_SCORER": f"hf:{tiny_vlm_dirs['qwen2_vl']}"}
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.strip().splitlines()
    assert len(lines) == 2 and all(line.split()[3] == "logits" for line in lines)
