"""SIGKILL mid-ingest, run the same command again: every item stored exactly once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from tests.data_gen import write_good_images
from tests.e2e.cli import RETLLM, run


@pytest.mark.slow
def test_sigkill_then_rerun_stores_each_item_once(cli_env: dict[str, str], tmp_path: Path) -> None:
    n = 240
    write_good_images(tmp_path / "in", n=n)
    args = [RETLLM, "-v", "index", "add", str(tmp_path / "in")]
    proc = subprocess.Popen(args, env=cli_env, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True)
    stored = threading.Event()

    def watch() -> None:
        assert proc.stderr is not None
        for line in proc.stderr:
            if "so far)" in line and int(line.split("(")[1].split()[0]) >= 40:
                stored.set()
                return

    threading.Thread(target=watch, daemon=True).start()
    assert stored.wait(120), "ingest never got going"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(30)
    assert proc.returncode == -signal.SIGKILL

    r = run(["index", "add", str(tmp_path / "in")], cli_env)
    assert r.returncode == 0, r.stderr
    first_run = int(r.stderr.split("already present ")[1].split(",")[0])
    assert 40 <= first_run < n  # the kill really landed mid-ingest
    assert f"added {n - first_run}," in r.stderr

    out = tmp_path / "all.jsonl"
    run(["index", "export", "--out", str(out)], cli_env)
    ids = [json.loads(x)["id"] for x in out.read_text().splitlines()]
    assert len(ids) == n and len(set(ids)) == n
