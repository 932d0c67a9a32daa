from __future__ import annotations

import json
import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.cli import run

_EMBEDDERS: dict[tuple[str, int], Any] = {}


def ingest(env: dict[str, str], paths: list[Path], collection: str | None = None) -> None:
    """What ``retllm index add PATHS [-c COLLECTION]`` stores for ``env``, done in this process: the CLI's own
    settings, sources and ingestor, without a process start per test (the command itself: tests/e2e)."""
    from retllm.cli.main import _ingestor
    from retllm.ingest import iter_sources
    from retllm.registry import make_embedder, make_index
    from retllm.settings import Settings

    with environ(env):
        s = Settings()
    key = (s.embedder, s.batch_size)
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = make_embedder(s)
    index = make_index(s)
    try:
        report = _ingestor(s, _EMBEDDERS[key], index, collection or s.collection).run(iter_sources(paths))
    finally:
        index.close()
    assert report.added + report.already_present + report.duplicates > 0, report  # the CLI's exit 0


def cli_search(env: dict[str, str], *args: str) -> list[dict[str, Any]]:
    r = run(["search", *args, "--json"], env)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@contextmanager
def environ(env: dict[str, str]) -> Iterator[None]:
    """The CLI's environment in this process, so Settings() reads exactly what the CLI read."""
    saved = dict(os.environ)
    os.environ.clear()
    os.environ.update(env)
    try:
        yield
    finally:
        os.environ.clear()
        os.environ.update(saved)


@contextmanager
def deps_from(env: dict[str, str], **kw: Any) -> Iterator[Any]:
    from retllm.tools.deps import Deps

    from retllm.settings import Settings

    with environ(env):
        deps = Deps(Settings(), **kw)
    try:
        yield deps
    finally:
        deps.close()


@pytest.fixture
def scene_images(tmp_path: Path) -> list[Path]:
    """Five images of different sizes and colours (varied enough that tiny models rank them differently)."""
    import numpy as np
    from PIL import Image

    out = []
    for i in range(5):
        rng = np.random.default_rng(7 + i)
        arr = rng.integers(0, 256, (40 + 8 * i, 56 + 4 * i, 3), dtype=np.uint8)
        arr[: 10 + 3 * i, :, i % 3] = 255
        p = tmp_path / f"scene_{i}.png"
        Image.fromarray(arr).save(p)
        out.append(p)
    return out
