from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.data_gen import write_bad_files, write_good_images
from tests.e2e.cli import run
from tests.fakes.tiny_clip import TINY_CLIP_CFG, build_tiny_clip


def test_add_search_stats_delete_export(cli_env: dict[str, str], tmp_path: Path) -> None:
    folder = tmp_path / "in"
    good = write_good_images(folder, n=6)
    bad = write_bad_files(tmp_path / "bad")
    r = run(["index", "add", str(folder), str(bad["corrupt"]), "-c", "pics"], cli_env)
    assert r.returncode == 0, r.stderr
    assert "added 6" in r.stderr and "skipped 1" in r.stderr and "corrupt.png" in r.stderr

    r = run(["search", "--image", str(good[2]), "-c", "pics", "-k", "3", "--coarse-only", "--json"], cli_env)
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    assert [h["rank"] for h in hits] == [1, 2, 3]
    assert hits[0]["image"] == str(good[2].resolve()) and hits[0]["vector"] == "image"  # auto: its best kind
    assert abs(hits[0]["coarse_score"] - 1) < 1e-4  # and that kind's cosine
    r = run(
        ["search", "--image", str(good[2]), "-c", "pics", "-k", "3", "--vector", "image", "--coarse-only", "--json"],
        cli_env,
    )
    by_image = json.loads(r.stdout)
    assert by_image[0]["image"] == str(good[2].resolve()) and abs(by_image[0]["coarse_score"] - 1) < 1e-4
    assert {"id", "rank", "coarse_score", "text", "image", "payload"} <= set(hits[0])

    r = run(["search", "random noise", "-c", "pics", "--coarse-only"], cli_env)
    assert r.returncode == 0 and "rank" in r.stdout  # human table

    r = run(["index", "optimize", "-c", "pics"], cli_env)
    assert r.returncode == 0 and "optimized 'pics' (6 items)" in r.stdout, r.stderr
    r = run(["search", "--image", str(good[2]), "-c", "pics", "-k", "3", "--coarse-only", "--json"], cli_env)
    assert [h["id"] for h in json.loads(r.stdout)] == [h["id"] for h in hits]
    r = run(["index", "optimize", "-c", "nope"], cli_env)
    assert r.returncode == 1 and "no collection 'nope'" in r.stderr

    r = run(["index", "stats", "--json"], cli_env)
    assert json.loads(r.stdout)["collections"] == [{"collection": "pics", "points": 6, "dim": 32, "broken": None}]

    r = run(["index", "delete", hits[0]["id"], "no-such-id", "-c", "pics"], cli_env)
    assert r.returncode == 0 and "deleted 1 of 2" in r.stdout

    r = run(["index", "drop", "-c", "pics"], cli_env)
    assert r.returncode == 1 and "deletes 5 items; repeat with --yes" in r.stderr
    out = tmp_path / "export.jsonl"
    r = run(["index", "export", "-c", "pics", "--out", str(out), "--vectors"], cli_env)
    rows = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(rows) == 5 and len(rows[0]["vectors"]["image"]) == 32
    assert run(["index", "drop", "-c", "pics", "--yes"], cli_env).returncode == 0
    assert json.loads(run(["index", "stats", "--json"], cli_env).stdout)["collections"] == []


def test_filters_on_manifest_fields(cli_env: dict[str, str], tmp_path: Path) -> None:
    write_good_images(tmp_path / "imgs", n=4)
    m = tmp_path / "m.jsonl"
    m.write_text(
        "".join(
            json.dumps({"image": f"imgs/img_00{i}.png", "text": f"item {i}", "group": "ab"[i % 2]}) + "\n"
            for i in range(4)
        )
    )
    assert run(["index", "add", str(m)], cli_env).returncode == 0
    r = run(["search", "item", "--filter", "group=b", "-k", "10", "--coarse-only", "--json"], cli_env)
    hits = json.loads(r.stdout)
    assert len(hits) == 2 and all(h["payload"]["group"] == "b" for h in hits)


def test_errors_are_one_clear_line_and_change_nothing(cli_env: dict[str, str], tmp_path: Path) -> None:
    write_good_images(tmp_path / "in", n=2)
    assert run(["index", "add", str(tmp_path / "in")], cli_env).returncode == 0
    before = run(["index", "stats", "--json"], cli_env).stdout

    r = run(["search", "--coarse-only"], cli_env)
    assert r.returncode == 1 and r.stderr.strip() == "error: empty query: give query text, --image, or both"
    r = run(["search", "   ", "--coarse-only"], cli_env)
    assert r.returncode == 1 and "empty query" in r.stderr

    r = run(["search", "x", "-c", "nope", "--coarse-only"], cli_env)
    assert r.returncode == 1 and "no collection 'nope'" in r.stderr and len(r.stderr.strip().splitlines()) == 1

    other = build_tiny_clip(tmp_path / "wide", cfg={**TINY_CLIP_CFG, "embed_dim": 48})
    env = {**cli_env, "RETLLM_EMBEDDER": f"open_clip:local-dir:{other}"}
    r = run(["search", "x", "--coarse-only"], env)
    assert r.returncode == 1 and "holds 32-d vectors but the embedder makes 48-d" in r.stderr
    r = run(["index", "add", str(tmp_path / "in")], env)
    assert r.returncode == 1 and "holds 32-d vectors" in r.stderr

    r = run(["search", "x", "--filter", "novalue", "--coarse-only"], cli_env)
    assert r.returncode == 1 and "key=value" in r.stderr
    r = run(["search", "x", "--vector", "colour", "--coarse-only"], cli_env)
    assert r.returncode == 1 and r.stderr.strip() == (
        "error: --vector must be auto or one of image, text, fused, got 'colour'"
    )
    r = run(["search", "x"], {**cli_env, "RETLLM_BATCH_SIZE": "0"})
    assert r.returncode == 1 and r.stderr.startswith("error: invalid setting batch_size")
    assert run(["index", "stats", "--json"], cli_env).stdout == before


@pytest.mark.slow  # several CLI subprocesses: CI's slow pass (keeps the default run under 10 min)
def test_add_exits_nonzero_only_when_nothing_could_be_added(cli_env: dict[str, str], tmp_path: Path) -> None:
    bad = write_bad_files(tmp_path / "bad")
    r = run(["index", "add", str(tmp_path / "bad")], cli_env)
    assert r.returncode == 1 and f"skipped {len(bad)}" in r.stderr
    good = write_good_images(tmp_path / "good", n=1)
    assert run(["index", "add", str(good[0]), str(tmp_path / "bad")], cli_env).returncode == 0
    again = run(["index", "add", str(good[0])], cli_env)  # nothing new, nothing failed
    assert again.returncode == 0 and "already present 1" in again.stderr


@pytest.mark.slow  # two stores and subprocesses: CI's slow pass (keeps the default run under 10 min)
def test_migrate_to_qdrant_client_local_mode(cli_env: dict[str, str], tmp_path: Path) -> None:
    write_good_images(tmp_path / "in", n=5)
    assert run(["index", "add", str(tmp_path / "in")], cli_env).returncode == 0
    target = tmp_path / "server-standin"
    r = run(["index", "migrate", "--to", str(target)], cli_env)
    assert r.returncode == 0, r.stderr
    assert "migrated 5 items" in r.stdout
    env = {**cli_env, "RETLLM_QDRANT_URL": str(target)}
    r = run(["index", "stats", "--json"], env)
    assert json.loads(r.stdout)["collections"] == [{"collection": "default", "points": 5, "dim": 32, "broken": None}]
    r = run(["search", "--image", str(tmp_path / "in" / "img_001.png"), "--coarse-only", "--json", "-k", "1"], env)
    assert json.loads(r.stdout)[0]["image"].endswith("img_001.png")


def test_demo_runs_end_to_end(cli_env: dict[str, str]) -> None:
    r = run(["demo", "-k", "2", "--coarse-only"], cli_env)
    assert r.returncode == 0, r.stderr
    assert "demo collection 'demo': added 68" in r.stderr
    assert "text -> image: 'a red circle'" in r.stdout and "image -> image" in r.stdout
