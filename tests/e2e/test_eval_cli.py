"""``retllm eval`` as a user runs it: the real console script, the tiny CLIP, the fake endpoint."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.cli import run
from tests.eval_runs import write_karpathy_set
from tests.fakes.openai_server import fake_openai
from tests.integration.test_eval_runner import write_flickr


def test_bad_input_is_one_line_and_exit_1(cli_env: dict[str, str], tmp_path: Path) -> None:
    data = write_flickr(tmp_path / "flickr", n=2)
    clean = write_flickr(tmp_path / "clean", n=2, missing=False)
    for args, words in (
        (["eval", "nope", "--data", str(data)], "unknown dataset 'nope'"),
        (["eval", "flickr30k", "--data", str(tmp_path / "absent")], "no such folder"),
        (["eval", "flickr30k"], "--data is required"),
        (["eval", "flickr30k", "--data", str(data), "--preset", "huge"], "unknown preset 'huge'; valid: paper, small"),
        (["eval", "flickr30k", "--data", str(data), "--task", "x"], "flickr30k has no tasks"),
        (["eval", "flickr30k", "extra", "--data", str(data)], "unexpected argument(s) after 'flickr30k': extra"),
        (["eval", "compare"], "name one or more run folders"),
        (["eval", "flickr30k", "--data", str(data), "--listwise"], "--listwise is for mmeb"),
        (["eval", "coco", "--data", str(data), "--rounds", "2"], "--rounds is for the listwise benchmarks"),
        (["eval", "mmeb", "--data", str(data), "--rounds", "2"], "--rounds is for the listwise benchmarks"),
        (["eval", "sugarcrepe", "--data", str(data), "--split", "val"], "sugarcrepe has only the 'test' split"),
        (["eval", "sugarcrepe", "--data", str(data), "--k", "3"], "--k does not apply"),
        (["eval", "coco", "--data", str(data), "--keep-instructions"], "--keep-instructions and --vector are for mmeb"),
        (
            ["eval", "urban1k", "--data", str(data), "--vector", "image"],
            "--keep-instructions and --vector are for mmeb",
        ),
        (["eval", "mmeb", "--data", str(data), "--vector", "both"], "--vector must be auto or one of image, text"),
        # the preset's embedder wins over the environment's tiny one (and is not downloadable here)
        (["eval", "flickr30k", "--data", str(clean), "--preset", "small"], "ViT-B-32@laion2b_s34b_b79k is not cached"),
        (["eval", "compare", str(tmp_path / "gone")], str(tmp_path / "gone")),
    ):
        r = run([*args, "--coarse-only"], cli_env)
        assert r.returncode == 1, r.stderr
        assert r.stderr.strip().count("\n") == 0 and words in r.stderr, r.stderr


@pytest.mark.slow  # two eval runs as subprocesses: CI's slow pass
def test_the_official_folder_names_are_found(cli_env: dict[str, str], tmp_path: Path) -> None:
    """Karpathy's split file beside the folder the official archive unpacks to, as a new user has it."""
    for name, folder, coco in (("flickr30k", "flickr30k-images", False), ("coco", "val2017", True)):
        data = write_karpathy_set(tmp_path / name, name, folder, coco_names=coco)
        if coco:  # the 2017 archive names files by number alone
            for p in (data / folder).iterdir():
                p.rename(p.with_name(p.name.removeprefix("COCO_val2014_")))
        out = tmp_path / f"{name}-run"
        r = run(["eval", name, "--data", str(data), "--coarse-only", "--no-plots", "--out", str(out)], cli_env)
        assert r.returncode == 0, r.stderr
        res = json.loads((out / "results.json").read_text())
        assert res["corpus"]["images"] == 3 and res["problems"]["count"] == 0
        assert res["directions"]["text_to_image"]["queries"] == 6 and res["directions"]["image_to_text"]["queries"] == 3


def test_a_run_with_nothing_to_evaluate_exits_1_with_one_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    """The images in a folder no loader knows: every entry skipped. Not a report of "Corpus: none" and exit 0."""
    data = write_karpathy_set(tmp_path / "f", "flickr30k", "flickr30k-pictures", n=2)
    r = run(["eval", "flickr30k", "--data", str(data), "--coarse-only", "--no-plots"], cli_env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.strip().count("\n") == 0, r.stderr
    assert f"flickr30k: nothing to evaluate in {data}" in r.stderr and "2 entries skipped" in r.stderr
    first = "first: dataset_flickr30k.json: images[0]: image 1000.jpg not found in images/, flickr30k-images/"
    assert first in r.stderr
    assert not (Path(cli_env["RETLLM_DATA_DIR"]) / "eval").exists()  # no report written


@pytest.mark.slow  # two eval runs as subprocesses: CI's slow pass
def test_eval_writes_results_and_report(cli_env: dict[str, str], tmp_path: Path) -> None:
    data = write_flickr(tmp_path / "flickr")
    with fake_openai() as fake:
        env = {**cli_env, "RETLLM_SCORER": "openai:fake-vlm", "RETLLM_OPENAI_BASE_URL": fake.url}
        r = run(["eval", "flickr30k", "--data", str(data), "--limit", "4", "--k", "3"], env)
        assert r.returncode == 0, r.stderr
        sent = len(fake.pair_requests)
        assert sent == 3 * (8 + 4)
        out = Path(cli_env["RETLLM_DATA_DIR"]) / "eval" / "flickr30k-test-k3-limit4"
        res = json.loads((out / "results.json").read_text())
        cfg = res["config"]
        assert (cfg["dataset"], cfg["split"], cfg["limit"], cfg["k"]) == ("flickr30k", "test", 4, 3)
        assert cfg["scorer"] == "openai:fake-vlm" and cfg["embedder"].startswith("open_clip:")
        assert {"fingerprint", "retllm", "packages", "git_commit", "date"} <= set(cfg)
        assert set(cfg["packages"]) == {"torch", "transformers", "open_clip_torch", "qdrant-client"}
        assert res["problems"]["count"] == 1
        for d in res["directions"].values():
            assert set(d["coarse"]) == set(d["reranked"]) == {"R@1", "R@5", "R@10"}
            assert d["mllm_calls_per_query"] == 3 and d["latency_s"]["p95"] > 0
        assert "| re-ranked |" in (out / "report.md").read_text() and "| re-ranked |" in r.stdout
        assert (Path(cli_env["RETLLM_DATA_DIR"]) / "eval" / "scores.sqlite").is_file()

        again = run(["eval", "flickr30k", "--data", str(data), "--limit", "4", "--k", "3"], env)
        assert again.returncode == 0, again.stderr
        assert len(fake.pair_requests) == sent  # every pair came from the cache
        res2 = json.loads((out / "results.json").read_text())
        assert [d["reranked"] for d in res2["directions"].values()] == [
            d["reranked"] for d in res["directions"].values()
        ]


@pytest.mark.slow  # a k sweep and a comparison as subprocesses: CI's slow pass
def test_a_k_sweep_draws_recall_against_k_and_compare_prints_the_runs(cli_env: dict[str, str], tmp_path: Path) -> None:
    from PIL import Image

    data = write_flickr(tmp_path / "flickr", n=4)
    with fake_openai() as fake:
        env = {**cli_env, "RETLLM_SCORER": "openai:fake-vlm", "RETLLM_OPENAI_BASE_URL": fake.url}
        out = tmp_path / "sweep"
        r = run(["eval", "flickr30k", "--data", str(data), "--k", "3", "--k", "2", "--out", str(out)], env)
        assert r.returncode == 0, r.stderr
        assert len(fake.pair_requests) == 3 * (8 + 4)  # k=2 first, then k=3 sends only each query's third pair
        for k in (2, 3):
            res = json.loads((out / f"k{k}" / "results.json").read_text())
            assert res["config"]["k"] == k
            for png in ("recall.png", "latency.png"):
                assert Image.open(out / f"k{k}" / png).size[0] > 100
        assert Image.open(out / "recall_vs_k.png").size[0] > 100
        assert "R@1 against k" in r.stderr
        c = run(["eval", "compare", str(out / "k2"), str(out / "k3")], env)
        assert c.returncode == 0, c.stderr
        assert "k2" in c.stdout and "k3" in c.stdout and "| k |" in c.stdout.replace("| `k` |", "| k |")


@pytest.mark.slow  # two eval runs as subprocesses: CI's slow pass
def test_sugarcrepe_and_mmeb_from_the_command_line(cli_env: dict[str, str], tmp_path: Path) -> None:
    from retllm.eval.choice import candidate_id
    from tests.unit.test_eval_choice_data import mmeb_row, png, sugar_entry, write_category, write_parquet

    sugar = tmp_path / "sugarcrepe"
    write_category(sugar, "add_obj", {str(i): sugar_entry(i) for i in range(3)})
    swapped = {str(i): sugar_entry(i, caption=f"sofa on a dog {i}") for i in range(2)}  # not add_obj's questions
    write_category(sugar, "swap_att", swapped | {"x": {"filename": ""}})
    mmeb = tmp_path / "mmeb"
    for i in range(3):
        png(mmeb / "eval_images" / "Toy" / f"{i}.png", (40 * i, 200, 10))
    rows = [mmeb_row(f"<|image_1|> what is shown {i}", f"Toy/{i}.png", ["a", "b", "c"], None) for i in range(3)]
    write_parquet(mmeb / "Toy" / "test-00000-of-00001.parquet", rows)
    with fake_openai() as fake:
        env = {**cli_env, "RETLLM_SCORER": "openai:fake-vlm", "RETLLM_OPENAI_BASE_URL": fake.url}
        r = run(["eval", "sugarcrepe", "--data", str(sugar), "--no-plots"], env)
        assert r.returncode == 0, r.stderr
        res = json.loads(
            (Path(cli_env["RETLLM_DATA_DIR"]) / "eval" / "sugarcrepe-test-listwise" / "results.json").read_text()
        )
        assert {c: d["queries"] for c, d in res["directions"].items()} == {"add_obj": 3, "swap_att": 2}
        assert res["config"]["rounds"] == 2 and res["problems"]["count"] >= 6  # 5 category files missing + 1 entry
        assert "## add_obj (3 queries)" in r.stdout and "accuracy" in r.stdout
        assert len(fake.pair_requests) == 2 * 5  # both option orders

        m = run(
            [
                "eval",
                "mmeb",
                "--data",
                str(mmeb),
                "--k",
                "2",
                "--listwise",
                "--rounds",
                "2",
                "--out",
                str(tmp_path / "m"),
            ],
            env,
        )
        assert m.returncode == 0, m.stderr
        res = json.loads((tmp_path / "m" / "results.json").read_text())
        d = res["directions"]["Toy"]
        assert d["queries"] == 3 and d["metric"] == "P@1" and set(d["coarse"]) == set(d["reranked"]) == {"P@1"}
        assert res["config"]["mode"] == "listwise" and (tmp_path / "m" / "recall.png").is_file()
        assert res["config"]["instructions_kept"] is False and res["config"]["using"] is None
        ranked = [json.loads(x) for x in (tmp_path / "m" / "rankings.jsonl").read_text().splitlines()]
        assert [row["positive"] for row in ranked] == [candidate_id("a", None)] * 3  # candidate 0 of each row

        kept = run(
            ["eval", "mmeb", "--data", str(mmeb), "--keep-instructions", "--vector", "text", "--coarse-only"], env
        )
        assert kept.returncode == 0, kept.stderr
        out = Path(cli_env["RETLLM_DATA_DIR"]) / "eval" / "mmeb-test-coarse-inst-text"  # its own default folder
        cfg = json.loads((out / "results.json").read_text())["config"]
        assert cfg["instructions_kept"] is True and cfg["using"] == "text" and cfg["mode"] == "coarse"
        assert cfg["collections"]["Toy"].endswith("-inst")  # other texts, so a collection of its own
        kept_rows = [json.loads(x) for x in (out / "rankings.jsonl").read_text().splitlines()]
        assert [len(row["coarse"]) for row in kept_rows] == [3, 3, 3]  # image queries matched the text vectors
