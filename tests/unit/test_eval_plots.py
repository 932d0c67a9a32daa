from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from retllm.errors import ConfigError
from retllm.eval.compare import load_run
from retllm.eval.plots import k_sweep_figure, latency_figure, plot_k_sweep, plot_run, recall_figure
from tests.eval_runs import QWEN, config, ranking, section, write_run

R = {"R@1": 0.5, "R@5": 0.75, "R@10": 0.875}


def full_run(folder: Path, k: int = 10, fine: float = 0.625, **changes: object) -> Path:
    rows = [
        *(ranking("text_to_image", f"t{i}", lat, False) for i, lat in enumerate([0.5, 1.0, 1.5])),
        *(ranking("text_to_image", f"c{i}", lat, True) for i, lat in enumerate([0.01, 0.02])),
        *(ranking("image_to_text", f"i{i}", lat, False) for i, lat in enumerate([2.0, 3.0])),
    ]
    return write_run(
        folder,
        config(k=k, **changes),
        {
            "text_to_image": section(R, {"R@1": fine, "R@5": 0.875, "R@10": 0.875}),
            "image_to_text": section({"R@1": 0.25}, {"R@1": 0.375}),
        },
        rows,
    )


def bars(fig) -> dict[str, list[float]]:  # type: ignore[no-untyped-def]
    ax = fig.axes[0]
    return {c.get_label(): [p.get_height() for p in c.patches] for c in ax.containers}


def assert_png(path: Path, size: tuple[int, int]) -> None:
    with Image.open(path) as im:
        assert im.format == "PNG" and im.size == size
        hist = im.convert("L").histogram()
        assert hist[255] > 0 and sum(hist[:100]) > 0  # something dark drawn on a white page


def test_plot_run_draws_both_pictures(tmp_path: Path) -> None:
    folder = full_run(tmp_path / "run")
    assert plot_run(folder) == [folder / "recall.png", folder / "latency.png"]
    # 6 x 4.8 inches (two sections) at 120 dpi
    assert_png(folder / "recall.png", (720, 576))
    assert_png(folder / "latency.png", (720, 576))


def test_recall_bars_are_the_headline_values(tmp_path: Path) -> None:
    fig = recall_figure(load_run(full_run(tmp_path / "run")))
    assert fig is not None
    assert bars(fig) == {"coarse": [50.0, 25.0], "re-ranked": [62.5, 37.5]}
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.texts] == ["50.0", "25.0", "62.5", "37.5"]  # the values written on the bars
    assert [t.get_text() for t in ax.get_xticklabels()] == ["text_to_image", "image_to_text"]
    # re-ranked bars stand right of their section's coarse bar
    coarse, fine = ax.containers
    assert [p.get_x() < q.get_x() for p, q in zip(coarse, fine, strict=True)] == [True, True]
    assert ax.get_ylabel() == "R@1 (%)"
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["coarse", "re-ranked"]
    assert f"re-ranked by {QWEN} (top-10)" in ax.get_title()


def test_sections_of_other_metrics_say_which(tmp_path: Path) -> None:
    folder = write_run(
        tmp_path / "mixed",
        config(dataset="mix"),
        {
            "replace_obj": section({"accuracy": 0.75}, {"accuracy": 0.875}, metric="accuracy"),
            "vqa": section({"P@1": 0.25}, {"P@1": 0.5}, metric="P@1"),
            "empty": section({}, {}, queries=0),  # no queries: no bar
        },
    )
    fig = recall_figure(load_run(folder))
    assert fig is not None and bars(fig) == {"coarse": [75.0, 25.0], "re-ranked": [87.5, 50.0]}
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["replace_obj\naccuracy", "vqa\nP@1"]
    assert ax.get_ylabel() == "headline metric (%)"


def test_coarse_only_run_has_coarse_bars_and_coarse_latency(tmp_path: Path) -> None:
    folder = write_run(
        tmp_path / "coarse",
        config(coarse_only=True, scorer=None),
        {"text_to_image": section(R, None, calls=0.0)},
        [ranking("text_to_image", "t1", 0.0125), ranking("text_to_image", "t2", 0.0375)],  # old rows: no "cached"
    )
    assert plot_run(folder) == [folder / "recall.png", folder / "latency.png"]
    run = load_run(folder)
    recall = recall_figure(run)
    assert recall is not None and bars(recall) == {"coarse": [50.0]}
    assert "coarse only" in recall.axes[0].get_title()
    latency = latency_figure(run)
    assert latency is not None
    ax = latency.axes[0]
    assert [t.get_text() for t in latency.legends[0].get_texts()] == ["coarse search (2 queries)"]
    assert "no query was answered from the cache alone" in ax.get_title()
    medians = {line.get_gid(): np.asarray(line.get_ydata()).tolist() for line in ax.lines if line.get_gid()}
    assert medians == {"median:text_to_image:scored": [0.025, 0.025]}


def test_latency_draws_cached_queries_apart(tmp_path: Path) -> None:
    fig = latency_figure(load_run(full_run(tmp_path / "run")))
    assert fig is not None
    ax = fig.axes[0]
    medians = {line.get_gid(): np.asarray(line.get_ydata())[0] for line in ax.lines if line.get_gid()}
    assert medians == pytest.approx(
        {"median:text_to_image:scored": 1.0, "median:text_to_image:cached": 0.015, "median:image_to_text:scored": 2.5}
    )
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "scorer called (5 queries)",
        "every score cached (2 queries)",
    ]
    assert "2 cached queries drawn apart" in ax.get_title()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["text_to_image\n(n=5)", "image_to_text\n(n=2)"]
    assert ax.get_yscale() == "log"  # 0.01 s to 3 s


def test_old_run_without_latencies_gets_recall_only(tmp_path: Path) -> None:
    folder = write_run(
        tmp_path / "old",
        config(),
        {"text_to_image": section(R, {"R@1": 0.75}, metric=None)},
        [ranking("text_to_image", "t1")],  # rows without latency_s or cached
    )
    (folder / "latency.png").write_bytes(b"an earlier run's picture")
    assert plot_run(folder) == [folder / "recall.png"]
    assert not (folder / "latency.png").exists()  # stale: this run has no latencies
    fig = recall_figure(load_run(folder))
    assert fig is not None and bars(fig) == {"coarse": [50.0], "re-ranked": [75.0]}
    assert latency_figure(load_run(folder)) is None


def test_run_without_any_values_draws_nothing(tmp_path: Path) -> None:
    folder = write_run(tmp_path / "none", config(), {"text_to_image": section({}, {}, queries=0)})
    assert plot_run(folder) == []
    assert sorted(p.name for p in folder.iterdir()) == ["rankings.jsonl", "results.json"]


def test_bad_run_folder_is_named(tmp_path: Path) -> None:
    (tmp_path / "bad").mkdir()
    (tmp_path / "bad" / "results.json").write_text("{oops", encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{tmp_path / 'bad' / 'results.json'} is not valid JSON"):
        plot_run(tmp_path / "bad")
    with pytest.raises(ConfigError, match="has no results.json"):
        plot_k_sweep([tmp_path], tmp_path / "sweep.png")


def test_k_sweep_lines(tmp_path: Path) -> None:
    dirs = [full_run(tmp_path / f"k{k}", k=k, fine=fine) for k, fine in ((20, 0.75), (5, 0.5625), (10, 0.625))]
    out = plot_k_sweep(dirs, tmp_path / "plots" / "sweep.png")
    assert out == tmp_path / "plots" / "sweep.png"
    assert_png(out, (900, 576))
    fig = k_sweep_figure([load_run(d) for d in dirs])
    ax = fig.axes[0]
    lines = {
        line.get_label(): (np.asarray(line.get_xdata()).tolist(), np.asarray(line.get_ydata()).tolist())
        for line in ax.lines
    }
    assert lines == {
        "text_to_image, coarse": ([5, 10, 20], [50.0, 50.0, 50.0]),
        "text_to_image, re-ranked": ([5, 10, 20], [56.25, 62.5, 75.0]),
        "image_to_text, coarse": ([5, 10, 20], [25.0, 25.0, 25.0]),
        "image_to_text, re-ranked": ([5, 10, 20], [37.5, 37.5, 37.5]),
    }
    assert [line.get_linestyle() for line in ax.lines] == ["--", "-", "--", "-"]
    assert list(ax.get_xticks()) == [5, 10, 20]


def test_k_sweep_refuses_runs_that_differ_in_more_than_k(tmp_path: Path) -> None:
    a = full_run(tmp_path / "a", k=5)
    b = full_run(tmp_path / "b", k=10, scorer="openai:gpt-4o-mini")
    with pytest.raises(ConfigError, match=f"scorer differs \\(a: '{QWEN}', b: 'openai:gpt-4o-mini'\\)"):
        plot_k_sweep([a, b], tmp_path / "sweep.png")
    c = full_run(tmp_path / "c", k=10, dataset="flickr30k")
    with pytest.raises(ConfigError, match="dataset differs"):
        plot_k_sweep([a, c], tmp_path / "sweep.png")
    d = full_run(tmp_path / "d", k=5)
    with pytest.raises(ConfigError, match="two runs of the sweep have k=5: a and d"):
        plot_k_sweep([a, d], tmp_path / "sweep.png")
    with pytest.raises(ConfigError, match="at least one"):
        plot_k_sweep([], tmp_path / "sweep.png")
    assert not (tmp_path / "sweep.png").exists()


def test_missing_matplotlib_names_the_extra(tmp_path: Path) -> None:
    folder = full_run(tmp_path / "run")
    # a fresh interpreter where importing matplotlib fails, as in an install without the plot extra
    code = (
        "import sys; sys.modules['matplotlib'] = None\n"
        "from retllm.errors import MissingDependencyError\n"
        "from retllm.eval.plots import plot_run\n"
        "try:\n"
        f"    plot_run({str(folder)!r})\n"
        "except MissingDependencyError as e:\n"
        "    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.strip() == "eval plots need matplotlib: pip install 'retllm[plot]'"
    assert not (folder / "recall.png").exists()
