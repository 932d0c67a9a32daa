"""The README's service snippet, run as written (the token, the served address and the photo substituted)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.service.conftest import TOKEN, running

README = Path(__file__).resolve().parents[2] / "README.md"


def _snippet() -> list[str]:
    text = README.read_text()
    section = text[text.index("## Service and web chat") :]
    block = re.search(r"```bash\n(.*?)```", section, re.S).group(1)
    return [line.split("  #")[0].strip() for line in block.strip().splitlines()]


def test_readme_service_snippet(scenes_env, scene_images, tmp_path) -> None:
    export, serve, curl = _snippet()
    assert export.startswith("export RETLLM_API_TOKEN=") and serve.startswith("retllm serve --host 0.0.0.0")
    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(scene_images[1].read_bytes())
    with running(scenes_env, api_token=TOKEN) as (url, _):
        cmd = curl.replace("$RETLLM_API_TOKEN", TOKEN).replace("http://localhost:8080", url)
        r = subprocess.run(cmd, shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    body = json.loads(r.stdout)
    assert r.returncode == 0 and len(body["hits"]) == 5 and body["k"] == 20 and body["scorer"] == "openai:fake-vlm"
