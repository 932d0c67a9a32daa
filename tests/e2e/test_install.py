"""Installed retllm lives under its own namespace and never shadows a user's ``agent`` or ``tools``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

CHECK = """
import importlib, json
out = {}
for name in ["retllm", "retllm.agent", "retllm.tools", "retllm.prompts", "agent", "tools", "prompts"]:
    try:
        importlib.import_module(name)
        out[name] = True
    except ModuleNotFoundError:
        out[name] = False
print(json.dumps(out))
"""


def test_namespace_from_outside_the_repo(tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", CHECK],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
        env={"PATH": "/usr/bin:/bin", "HOME": str(tmp_path)},
    )
    assert r.returncode == 0, r.stderr
    import json

    got = json.loads(r.stdout)
    assert got == {
        "retllm": True,
        "retllm.agent": True,
        "retllm.tools": True,
        "retllm.prompts": True,
        "agent": False,
        "tools": False,
        "prompts": False,
    }


def test_library_does_not_import_langgraph(tmp_path: Path) -> None:
    code = "import sys, retllm, retllm.pipeline, retllm.ingest, retllm.cli.main; print('langgraph' in sys.modules)"
    r = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == "False"
