"""Read evaluation run folders and set them side by side as Markdown (``retllm eval compare RUN...``).

A run folder is what :func:`~retllm.eval.runner.run_eval` writes: ``results.json`` (the summary) and
``rankings.jsonl`` (one row per query). Every benchmark of the harness shares that schema; runs written before a
key existed (``metric``, ``tokens``, ``latency_s.p50``, the rows' ``latency_s`` and ``cached``) still load, and
what they lack shows as "—".
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, ValidationError

from retllm.errors import ConfigError

RESULTS = "results.json"
RANKINGS = "rankings.jsonl"
DASH = "—"


class Latency(BaseModel):
    """Per-query latency summary, in seconds."""

    mean: float | None = None
    p50: float | None = None
    p95: float | None = None


class Tokens(BaseModel):
    """Tokens the scorer's model read and wrote over a section."""

    prompt: int = 0
    completion: int = 0


class Cache(BaseModel):
    """Score-cache hits and misses over a section (misses: the pairs this run sent to the model)."""

    hits: int = 0
    misses: int = 0


class Section(BaseModel):
    """One section of a run: a retrieval direction, a SugarCrepe category or an MMEB subset."""

    model_config = ConfigDict(extra="allow")

    queries: int = 0
    metric: str = "R@1"  # the headline metric; runs from before it was recorded are retrieval runs
    coarse: dict[str, float] = {}
    reranked: dict[str, float] | None = None
    reranked_ks_beyond_k_are_coarse: list[int] = []
    queries_per_s: float | None = None
    latency_s: Latency | None = None
    mllm_calls_per_query: float | None = None
    tokens: Tokens | None = None
    cache: Cache | None = None

    def headline(self) -> tuple[float | None, float | None]:
        """The headline metric, coarse and re-ranked (``None`` where the run has no such value)."""
        fine = self.reranked.get(self.metric) if self.reranked is not None else None
        return self.coarse.get(self.metric), fine


class RunConfig(BaseModel):
    """The configuration keys this module reads; the others are kept (``extra``) for the comparison."""

    model_config = ConfigDict(extra="allow")

    dataset: str
    split: str
    k: int
    limit: int | None = None
    coarse_only: bool = False
    embedder: str | None = None
    scorer: str | None = None


class _Results(BaseModel):
    model_config = ConfigDict(extra="allow")

    config: RunConfig
    directions: dict[str, Section]


@dataclass(frozen=True)
class Run:
    """One evaluation run, read from its folder.

    Attributes:
        path: The run folder.
        config: The validated configuration.
        sections: Section name → its summary, in the file's order.
        raw: ``results.json`` as parsed, for the keys this module does not model.
    """

    path: Path
    config: RunConfig
    sections: dict[str, Section]
    raw: dict[str, Any]

    @property
    def name(self) -> str:
        """The folder's name (the CLI names folders DATASET-SPLIT-MODE[-limitN])."""
        return self.path.name

    def rankings(self) -> list[dict[str, Any]]:
        """The rows of ``rankings.jsonl`` (``[]`` when the run has none).

        Raises:
            ConfigError: A row is not a JSON object; the message names the file and line.
        """
        path = self.path / RANKINGS
        if not path.is_file():
            return []
        rows: list[dict[str, Any]] = []
        with path.open(encoding="utf-8") as f:
            for n, line in enumerate(f, 1):
                if not line.strip():
                    continue
                try:
                    row = json.loads(line)
                except json.JSONDecodeError as e:
                    raise ConfigError(f"{path}:{n}: not valid JSON ({e.msg})") from e
                if not isinstance(row, dict):
                    raise ConfigError(f"{path}:{n}: expected a JSON object per line")
                rows.append(row)
        return rows


def load_run(path: str | Path) -> Run:
    """Read an evaluation run from its folder or its ``results.json``.

    Raises:
        ConfigError: The file is missing, is not JSON, or lacks what a run's results hold; the message names it.
    """
    p = Path(path)
    file = p / RESULTS if p.is_dir() else p
    if not file.is_file():
        where = f"{p} has no {RESULTS}" if p.is_dir() else f"{p} does not exist"
        raise ConfigError(f"{where}: give an evaluation run folder (written by `retllm eval`) or its {RESULTS}")
    try:
        raw = json.loads(file.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"{file} is not valid JSON: {e}") from e
    if not isinstance(raw, dict):
        raise ConfigError(f"{file}: expected a JSON object with 'config' and 'directions'")
    try:
        parsed = _Results.model_validate(raw)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()[:5])
        raise ConfigError(f"{file} is not an evaluation run's results: {problems}") from e
    return Run(path=file.parent, config=parsed.config, sections=parsed.directions, raw=raw)


def _labels(runs: Sequence[Run]) -> list[str]:
    names = [r.name for r in runs]
    if len(set(names)) == len(names):
        return names
    return [f"{i}:{n}" for i, n in enumerate(names, 1)]


def _cell(value: Any) -> str:
    """A value as a Markdown table cell: ``|`` escaped, one line."""
    if value is None:
        return DASH
    text = value if isinstance(value, str) else json.dumps(value)
    return text.replace("|", "\\|").replace("\n", " ")


def _row(cells: Iterable[str]) -> str:
    return "| " + " | ".join(cells) + " |"


def _pct(x: float | None) -> str:
    return DASH if x is None else f"{100 * x:.1f}"


def _num(x: float | None, digits: int) -> str:
    return DASH if x is None else f"{x:.{digits}f}"


def _flatten(config: dict[str, Any]) -> dict[str, Any]:
    """Nested keys as dotted paths; the fingerprint (a JSON string) is opened so its differing setting shows."""
    out: dict[str, Any] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict) and value:
            for k, v in value.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            out[prefix] = value

    for key, value in config.items():
        if key == "fingerprint" and isinstance(value, str):
            try:
                value = json.loads(value)
            except json.JSONDecodeError:
                pass  # an opaque fingerprint compares as a string
        walk(key, value)
    return out


_ABSENT = object()


def config_differences(runs: Sequence[Run]) -> dict[str, list[Any]]:
    """The configuration keys (dotted) whose values are not the same in every run, with each run's value.

    A key one run lacks (an older run) differs; its value there is the string ``"(not recorded)"``.
    """
    flat = [_flatten(r.raw.get("config") or {}) for r in runs]
    keys: list[str] = []
    for f in flat:
        keys += [k for k in f if k not in keys]
    out: dict[str, list[Any]] = {}
    for key in keys:
        values = [f.get(key, _ABSENT) for f in flat]
        if any(v != values[0] for v in values[1:]):
            out[key] = ["(not recorded)" if v is _ABSENT else v for v in values]
    return out


_HEADLINE_COLUMNS = (
    "section",
    "run",
    "scorer",
    "k",
    "queries",
    "metric",
    "coarse",
    "re-ranked",
    "Δ",
    "queries/s",
    "p95 latency (s)",
    "MLLM calls/query (this run)",
    "tokens per scored pair (prompt + completion)",
)
_HEADLINE_ALIGN = ("---", "---", "---", "---:", "---:", "---", "---:", "---:", "---:", "---:", "---:", "---:", "---:")


def _tokens_per_pair(s: Section) -> str:
    """Tokens per pair the model judged in this run: a cost rate that a warm score cache does not dilute
    (per query, a k sweep's later runs, which pay only for their new pairs, would look cheaper)."""
    misses = s.cache.misses if s.cache is not None else 0
    if s.tokens is None or not misses:
        return DASH
    return f"{s.tokens.prompt / misses:.0f} + {s.tokens.completion / misses:.0f}"


def _headline_row(section: str, label: str, run: Run, s: Section) -> list[str]:
    coarse, fine = s.headline()
    delta = DASH if coarse is None or fine is None else f"{100 * (fine - coarse):+.1f}"
    return [
        _cell(section),
        _cell(label),
        _cell(run.config.scorer) if not run.config.coarse_only else "coarse only",
        str(run.config.k),
        str(s.queries),
        _cell(s.metric),
        _pct(coarse),
        _pct(fine),
        delta,
        _num(s.queries_per_s, 2),
        _num(s.latency_s.p95 if s.latency_s else None, 3),
        _num(s.mllm_calls_per_query, 2),
        _tokens_per_pair(s),
    ]


def _other_metrics(entries: Sequence[tuple[str, str, Section]]) -> list[str]:
    """A table of the non-headline metrics, ``coarse → re-ranked``; ``[]`` when no section has any."""
    keys: list[str] = []
    for _, _, s in entries:
        keys += [m for m in s.coarse if m != s.metric and m not in keys]
    if not keys:
        return []
    lines = [
        'Other metrics, coarse → re-ranked ("= coarse": a cut-off past k, which re-ranking leaves as it is):',
        "",
        _row(["section", "run", *keys]),
        "|---|---|" + "---:|" * len(keys),
    ]
    for section, label, s in entries:
        beyond = {f"R@{x}" for x in s.reranked_ks_beyond_k_are_coarse}
        cells = []
        for m in keys:
            coarse = s.coarse.get(m)
            if coarse is None or s.reranked is None or m in beyond:
                cells.append(_pct(coarse) + (" (= coarse)" if m in beyond and coarse is not None else ""))
            else:
                cells.append(f"{_pct(coarse)} → {_pct(s.reranked.get(m))}")
        lines.append(_row([_cell(section), _cell(label), *cells]))
    return lines + [""]


def compare_runs(paths: Sequence[str | Path]) -> str:
    """A Markdown comparison of evaluation runs: what differs in their configuration, then their numbers.

    One table per dataset and split, one row per (section, run) with the runs of a section next to each other:
    the headline metric coarse and re-ranked, the change in points, throughput, p95 latency, MLLM calls and
    tokens per scored pair. Reads best for 2-6 runs.

    Args:
        paths: Run folders (or their ``results.json``), in the order their rows should appear.

    Raises:
        ConfigError: No path, or a path that is not a readable run (the message names it).
    """
    if not paths:
        raise ConfigError("compare needs at least one evaluation run folder")
    runs = [load_run(p) for p in paths]
    labels = _labels(runs)
    lines = [f"# Comparison of {len(runs)} evaluation run(s)", ""]
    lines += [f"{i}. `{label}`: {run.path}" for i, (label, run) in enumerate(zip(labels, runs, strict=True), 1)]
    lines.append("")

    if len(runs) > 1:
        lines += ["## Configuration differences", ""]
        diff = config_differences(runs)
        if diff:
            lines += [_row(["key", *(_cell(x) for x in labels)]), "|---|" + "---|" * len(runs)]
            lines += [_row([_cell(key), *(_cell(v) for v in values)]) for key, values in diff.items()]
        else:
            lines.append("The runs' configurations are identical.")
        lines.append("")

    groups: dict[tuple[str, str], list[int]] = {}
    for i, run in enumerate(runs):
        groups.setdefault((run.config.dataset, run.config.split), []).append(i)
    for (dataset, split), members in groups.items():
        sections: list[str] = []
        for i in members:
            sections += [s for s in runs[i].sections if s not in sections]
        entries = [
            (section, labels[i], runs[i], runs[i].sections[section])
            for section in sections
            for i in members
            if section in runs[i].sections
        ]
        lines += [f"## {dataset} {split}", "", _row(_HEADLINE_COLUMNS), "|" + "|".join(_HEADLINE_ALIGN) + "|"]
        lines += [_row(_headline_row(section, label, run, s)) for section, label, run, s in entries]
        lines.append("")
        lines += _other_metrics([(section, label, s) for section, label, _, s in entries])
    return "\n".join(lines).rstrip("\n") + "\n"
