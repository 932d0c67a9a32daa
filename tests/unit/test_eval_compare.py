from __future__ import annotations

import json
from pathlib import Path

import pytest

from retllm.errors import ConfigError
from retllm.eval.compare import compare_runs, config_differences, load_run
from tests.eval_runs import QWEN, config, ranking, section, write_run

R = {"R@1": 0.5, "R@5": 0.75, "R@10": 0.875}


def run_k10(root: Path) -> Path:
    return write_run(
        root / "coco-test-k10",
        config(),
        {
            "text_to_image": section(R, {"R@1": 0.625, "R@5": 0.875, "R@10": 0.875}, tokens=(6400, 80)),
            "image_to_text": section(
                {"R@1": 0.25, "R@5": 0.5, "R@10": 0.75},
                {"R@1": 0.5, "R@5": 0.625, "R@10": 0.75},
                queries=4,
                qps=1.25,
                p95=1.5,
                tokens=(4000, 40),
            ),
        },
        [ranking("text_to_image", "t1", 0.5, False)],
    )


def run_k5(root: Path) -> Path:
    fp = json.dumps({"dtype": "torch.bfloat16", "prompts": "abc"}, sort_keys=True)
    return write_run(
        root / "coco-test-k5",
        config(k=5, fingerprint=fp, date="2025-01-02T00:00:00+00:00"),
        {"text_to_image": section(R, {"R@1": 0.75, "R@5": 0.875, "R@10": 0.875}, calls=5.0, beyond_k=(10,))},
    )


def run_coarse(root: Path) -> Path:
    return write_run(
        root / "coco-test-coarse",
        config(coarse_only=True, scorer=None),
        {"text_to_image": section(R, None, qps=100.0, p95=0.0125, calls=0.0)},
    )


def run_old(root: Path) -> Path:
    cfg = config()
    del cfg["git_commit"]
    return write_run(root / "coco-old", cfg, {"text_to_image": section(R, R, metric=None)}, [ranking("x", "q")])


def run_sugarcrepe(root: Path) -> Path:
    acc = section({"accuracy": 0.5}, {"accuracy": 0.75}, metric="accuracy", queries=16, calls=2.0, tokens=(3200, 32))
    return write_run(
        root / "sugarcrepe-val",
        config(dataset="sugarcrepe", split="val", limit=None),
        {"replace_obj": acc, "swap_att": section({"accuracy": 0.625}, None, metric="accuracy", queries=16)},
    )


def block(text: str, heading: str) -> list[str]:
    """The lines under a ``## heading`` up to the next heading."""
    lines = text.splitlines()
    start = lines.index(f"## {heading}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return [line for line in lines[start:end] if line]


HEADER = (
    "| section | run | scorer | k | queries | metric | coarse | re-ranked | Δ | queries/s | p95 latency (s) "
    "| MLLM calls/query (this run) | tokens per scored pair (prompt + completion) |"
)


def test_headline_table_exact(tmp_path: Path) -> None:
    text = compare_runs([run_k10(tmp_path), run_k5(tmp_path), run_coarse(tmp_path)])
    assert block(text, "coco test") == [
        HEADER,
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        # the runs of one section next to each other, in the order given
        f"| text_to_image | coco-test-k10 | {QWEN} | 10 | 8 | R@1 | 50.0 | 62.5 | +12.5 | 2.50 | 0.750 | 10.00 "
        "| 80 + 1 |",  # 6400 + 80 tokens over 80 pairs sent
        f"| text_to_image | coco-test-k5 | {QWEN} | 5 | 8 | R@1 | 50.0 | 75.0 | +25.0 | 2.50 | 0.750 | 5.00 | — |",
        "| text_to_image | coco-test-coarse | coarse only | 10 | 8 | R@1 | 50.0 | — | — | 100.00 | 0.013 | 0.00 | — |",
        f"| image_to_text | coco-test-k10 | {QWEN} | 10 | 4 | R@1 | 25.0 | 50.0 | +25.0 | 1.25 | 1.500 | 10.00 "
        "| 100 + 1 |",
        'Other metrics, coarse → re-ranked ("= coarse": a cut-off past k, which re-ranking leaves as it is):',
        "| section | run | R@5 | R@10 |",
        "|---|---|---:|---:|",
        "| text_to_image | coco-test-k10 | 75.0 → 87.5 | 87.5 → 87.5 |",
        "| text_to_image | coco-test-k5 | 75.0 → 87.5 | 87.5 (= coarse) |",
        "| text_to_image | coco-test-coarse | 75.0 | 87.5 |",
        "| image_to_text | coco-test-k10 | 50.0 → 62.5 | 75.0 → 75.0 |",
    ]
    lines = text.splitlines()
    assert lines[2:5] == [
        f"1. `coco-test-k10`: {tmp_path / 'coco-test-k10'}",
        f"2. `coco-test-k5`: {tmp_path / 'coco-test-k5'}",
        f"3. `coco-test-coarse`: {tmp_path / 'coco-test-coarse'}",
    ]


def test_configuration_differences_only_the_keys_that_differ(tmp_path: Path) -> None:
    text = compare_runs([run_k10(tmp_path), run_k5(tmp_path), run_coarse(tmp_path)])
    assert block(text, "Configuration differences") == [
        "| key | coco-test-k10 | coco-test-k5 | coco-test-coarse |",
        "|---|---|---|---|",
        "| k | 10 | 5 | 10 |",
        "| coarse_only | false | false | true |",
        f"| scorer | {QWEN} | {QWEN} | — |",
        "| fingerprint.dtype | torch.float32 | torch.bfloat16 | torch.float32 |",  # the fingerprint opened
        "| date | 2025-01-01T00:00:00+00:00 | 2025-01-02T00:00:00+00:00 | 2025-01-01T00:00:00+00:00 |",
    ]


def test_identical_configurations_are_said_so(tmp_path: Path) -> None:
    a = run_k10(tmp_path / "a")
    b = run_k5(tmp_path / "b")
    (b / "results.json").write_text((a / "results.json").read_text())
    text = compare_runs([a, b])
    assert block(text, "Configuration differences") == ["The runs' configurations are identical."]
    assert "1:coco-test-k10" not in text  # distinct folder names are the labels as they are


def test_same_folder_names_are_numbered(tmp_path: Path) -> None:
    a, b = run_k10(tmp_path / "a"), run_k10(tmp_path / "b")
    text = compare_runs([a, b])
    assert "| text_to_image | 1:coco-test-k10 |" in text and "| text_to_image | 2:coco-test-k10 |" in text


def test_old_format_run_shows_dashes_for_what_it_lacks(tmp_path: Path) -> None:
    text = compare_runs([run_k10(tmp_path), run_old(tmp_path)])
    # no "metric": R@1; no tokens: a dash; its p95 is still there
    assert f"| text_to_image | coco-old | {QWEN} | 10 | 8 | R@1 | 50.0 | 50.0 | +0.0 | 2.50 | 0.750 | 10.00 | — |" in (
        text.splitlines()
    )
    assert "| git_commit | aaaa111 | (not recorded) |" in block(text, "Configuration differences")


def test_runs_of_different_datasets_get_a_table_each(tmp_path: Path) -> None:
    text = compare_runs([run_sugarcrepe(tmp_path), run_k10(tmp_path)])
    assert [line for line in text.splitlines() if line.startswith("## ")] == [
        "## Configuration differences",
        "## sugarcrepe val",
        "## coco test",
    ]
    assert block(text, "sugarcrepe val") == [
        HEADER,
        "|---|---|---|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|",
        f"| replace_obj | sugarcrepe-val | {QWEN} | 10 | 16 | accuracy | 50.0 | 75.0 | +25.0 | 2.50 | 0.750 | 2.00 "
        "| 100 + 1 |",
        f"| swap_att | sugarcrepe-val | {QWEN} | 10 | 16 | accuracy | 62.5 | — | — | 2.50 | 0.750 | 10.00 | — |",
    ]  # one metric per section: no "other metrics" table
    assert len(block(text, "coco test")) == 2 + 2 + 3 + 2  # header, two rows, then the other metrics
    diff = block(text, "Configuration differences")
    assert (
        "| dataset | sugarcrepe | coco |" in diff and "| split | val | test |" in diff and "| limit | — | 8 |" in diff
    )


def test_a_single_run_has_no_differences_section(tmp_path: Path) -> None:
    text = compare_runs([run_coarse(tmp_path)])
    assert "## Configuration differences" not in text
    assert "| text_to_image | coco-test-coarse | coarse only | 10 | 8 | R@1 | 50.0 | — | — |" in text


def test_load_run_from_folder_or_file(tmp_path: Path) -> None:
    folder = run_k10(tmp_path)
    a, b = load_run(folder), load_run(folder / "results.json")
    assert a.path == b.path == folder and a.name == "coco-test-k10"
    assert a.config.k == 10 and a.config.scorer == QWEN and (a.config.model_extra or {})["git_commit"] == "aaaa111"
    assert a.sections["image_to_text"].headline() == (0.25, 0.5)
    assert a.rankings() == [ranking("text_to_image", "t1", 0.5, False)]
    old = load_run(run_old(tmp_path))
    assert old.sections["text_to_image"].metric == "R@1" and old.sections["text_to_image"].tokens is None
    assert config_differences([a, a]) == {}


def test_missing_runs_are_named(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=f"{tmp_path / 'nowhere'} does not exist"):
        load_run(tmp_path / "nowhere")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match=f"{tmp_path / 'empty'} has no results.json"):
        load_run(tmp_path / "empty")
    with pytest.raises(ConfigError, match="at least one"):
        compare_runs([])


def test_bad_json_is_named(tmp_path: Path) -> None:
    good = run_k10(tmp_path)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "results.json").write_text('{"config": {"dataset": ', encoding="utf-8")
    with pytest.raises(ConfigError, match=f"{bad / 'results.json'} is not valid JSON: .*line 1"):
        compare_runs([good, bad])
    (bad / "results.json").write_text("[1, 2]", encoding="utf-8")
    with pytest.raises(ConfigError, match="expected a JSON object"):
        load_run(bad)


def test_results_without_the_schema_are_named(tmp_path: Path) -> None:
    folder = run_k10(tmp_path)
    results = json.loads((folder / "results.json").read_text())
    del results["config"]["dataset"]
    results["directions"]["text_to_image"]["coarse"] = {"R@1": "high"}
    (folder / "results.json").write_text(json.dumps(results))
    with pytest.raises(ConfigError, match="not an evaluation run's results: ") as e:
        load_run(folder)
    assert "config.dataset: Field required" in str(e.value)
    assert "directions.text_to_image.coarse.R@1" in str(e.value)


def test_bad_rankings_line_is_named(tmp_path: Path) -> None:
    folder = run_k10(tmp_path)
    with (folder / "rankings.jsonl").open("a") as f:
        f.write("\n[]\n")
    with pytest.raises(ConfigError, match=f"{folder / 'rankings.jsonl'}:3: expected a JSON object"):
        load_run(folder).rankings()
