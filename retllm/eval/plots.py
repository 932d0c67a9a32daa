"""Pictures of evaluation runs: the headline metric per section, per-query latency, and a sweep over k.

Figures are built with matplotlib's object API on the Agg canvas: no pyplot, so no window, no global backend
switch and no figure registry to leak. ``*_figure`` functions return the :class:`~matplotlib.figure.Figure` (its
bars carry labels, its lines labels or gids) so callers and tests can read what was drawn; ``plot_*`` save PNGs.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from retllm.errors import ConfigError, MissingDependencyError
from retllm.eval.compare import Run, load_run

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

log = logging.getLogger(__name__)

RECALL_PNG = "recall.png"
LATENCY_PNG = "latency.png"
DPI = 120
SWEEP_KEYS = ("dataset", "split", "limit", "embedder", "scorer")  # what must match for runs to differ only in k
_COARSE, _FINE, _CACHED = "#9aa5b1", "#2f6db5", "#e3a33b"


def _new_figure(width: float, height: float) -> Figure:
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as e:
        raise MissingDependencyError("eval plots need matplotlib: pip install 'retllm[plot]'") from e
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _width(n: int) -> float:
    return min(24.0, max(6.0, 0.9 * n + 2))


def _set_categories(ax: Axes, labels: Sequence[str]) -> None:
    ax.set_xticks(range(len(labels)), labels)
    if len(labels) > 6 or max((len(line) for label in labels for line in label.split("\n")), default=0) > 16:
        ax.tick_params(axis="x", labelrotation=35)
        for t in ax.get_xticklabels():
            t.set_horizontalalignment("right")


def _metric_label(metrics: set[str]) -> str:
    return f"{next(iter(metrics))} (%)" if len(metrics) == 1 else "headline metric (%)"


def _stage(run: Run) -> str:
    c = run.config
    return "coarse only" if c.coarse_only or c.scorer is None else f"re-ranked by {c.scorer} (top-{c.k})"


def recall_figure(run: Run) -> Figure | None:
    """Grouped bars of each section's headline metric (percent), coarse beside re-ranked, values written on top.

    The coarse bars' container is labelled ``"coarse"``, the re-ranked ones' ``"re-ranked"`` (absent for a
    coarse-only run). Sections without a value (no queries) are left out; ``None`` when none is left.
    """
    rows = [(name, s.metric, *s.headline()) for name, s in run.sections.items()]
    rows = [r for r in rows if r[2] is not None]
    if not rows:
        return None
    fine = [i for i, r in enumerate(rows) if r[3] is not None]
    metrics = {r[1] for r in rows}
    labels = [name if len(metrics) == 1 else f"{name}\n{metric}" for name, metric, _, _ in rows]
    fig = _new_figure(_width(len(rows)), 4.8)
    ax = fig.add_subplot()
    w = 0.38 if fine else 0.6
    shift = w / 2 if fine else 0.0
    coarse = ax.bar(
        [i - shift for i in range(len(rows))], [100 * float(r[2] or 0) for r in rows], w, color=_COARSE, label="coarse"
    )
    ax.bar_label(coarse, fmt="%.1f", padding=2, fontsize=8)
    if fine:
        bars = ax.bar(
            [i + shift for i in fine], [100 * float(rows[i][3] or 0) for i in fine], w, color=_FINE, label="re-ranked"
        )
        ax.bar_label(bars, fmt="%.1f", padding=2, fontsize=8)
    _set_categories(ax, labels)
    ax.set_ylim(0, 110)
    ax.set_yticks(range(0, 101, 20))
    ax.set_ylabel(_metric_label(metrics))
    ax.set_title(f"{run.config.dataset} {run.config.split}: {_stage(run)}\nembedder {run.config.embedder}", fontsize=10)
    fig.legend(loc="outside lower center", ncols=2, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _latencies(rows: Sequence[dict[str, Any]]) -> dict[str, tuple[list[float], list[float]]]:
    """Section → (latencies of queries that ran the scorer or the coarse search, latencies of cached ones)."""
    out: dict[str, tuple[list[float], list[float]]] = {}
    for row in rows:
        lat = row.get("latency_s")
        if not isinstance(lat, int | float) or isinstance(lat, bool) or not math.isfinite(lat):
            continue
        scored, cached = out.setdefault(str(row.get("direction")), ([], []))
        (cached if row.get("cached") is True else scored).append(float(lat))
    return out


def latency_figure(run: Run) -> Figure | None:
    """Box plots of per-query latency per section, from ``rankings.jsonl``.

    Queries whose every score came from the cache are drawn as a box of their own beside the others (their
    latency says nothing about the model). Each box's median line has the gid ``median:SECTION:scored`` or
    ``median:SECTION:cached``. ``None`` when no row records a latency (runs written before it was recorded).
    """
    data = _latencies(run.rankings())
    if not data:
        return None
    sections = list(data)
    n_cached = sum(len(c) for _, c in data.values())
    fig = _new_figure(_width(len(sections)), 4.8)
    ax = fig.add_subplot()
    handles: list[Any] = []
    names: list[str] = []
    coarse_only = run.config.coarse_only or run.config.scorer is None
    groups = (
        ("scored", 0, _COARSE if coarse_only else _FINE, "coarse search" if coarse_only else "scorer called"),
        ("cached", 1, _CACHED, "every score cached"),
    )
    for group, idx, color, name in groups:
        drawn = 0
        for i, section in enumerate(sections):
            xs = data[section][idx]
            if not xs:
                continue
            both = all(data[section])  # scored and cached side by side, else one box in the middle
            box = ax.boxplot(
                [xs],
                positions=[i + (0.2 if idx else -0.2) * both],
                widths=0.35 if both else 0.5,
                patch_artist=True,
                boxprops={"facecolor": color, "alpha": 0.8},
                medianprops={"color": "black", "gid": f"median:{section}:{group}"},
                flierprops={"markersize": 3},
            )
            if not drawn:
                handles.append(box["boxes"][0])
            drawn += len(xs)
        if drawn:
            names.append(f"{name} ({drawn} queries)")
    counts = [sum(map(len, data[s])) for s in sections]
    _set_categories(ax, [f"{s}\n(n={n})" for s, n in zip(sections, counts, strict=True)])
    ax.set_xlim(-0.6, len(sections) - 0.4)
    everything = [x for pair in data.values() for xs in pair for x in xs]
    if min(everything) > 0 and max(everything) / min(everything) > 100:
        ax.set_yscale("log")
    ax.set_ylabel("latency per query (s)")
    cache_note = f"{n_cached} cached queries drawn apart" if n_cached else "no query was answered from the cache alone"
    ax.set_title(f"{run.config.dataset} {run.config.split}: {_stage(run)}\n{cache_note}", fontsize=10)
    fig.legend(handles, names, loc="outside lower center", ncols=2, fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return fig


def _save(fig: Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=DPI, format="png")
    return path


def plot_run(run_dir: str | Path) -> list[Path]:
    """Draw ``recall.png`` and ``latency.png`` into a run folder; a picture without data is not drawn.

    A picture from an earlier run in the same folder that this run has no data for is removed, so the folder
    never shows numbers its ``results.json`` does not hold.

    Returns:
        The pictures written.

    Raises:
        ConfigError: ``run_dir`` is not a readable run (see :func:`~retllm.eval.compare.load_run`).
        MissingDependencyError: matplotlib is not installed.
    """
    run = load_run(run_dir)
    written: list[Path] = []
    for name, fig in ((RECALL_PNG, recall_figure(run)), (LATENCY_PNG, latency_figure(run))):
        path = run.path / name
        if fig is None:
            if path.exists():
                log.info("removing %s: this run has no data for it", path)
                path.unlink()
            continue
        written.append(_save(fig, path))
    return written


def _check_sweep(runs: Sequence[Run]) -> None:
    for key in SWEEP_KEYS:
        values = [getattr(r.config, key) for r in runs]
        if len(set(values)) > 1:
            which = ", ".join(f"{r.name}: {v!r}" for r, v in zip(runs, values, strict=True))
            raise ConfigError(f"a k sweep needs runs that differ only in k, but their {key} differs ({which})")
    seen: dict[int, str] = {}
    for r in runs:
        if r.config.k in seen:
            raise ConfigError(f"two runs of the sweep have k={r.config.k}: {seen[r.config.k]} and {r.name}")
        seen[r.config.k] = r.name
    fingerprints = {r.raw["config"].get("fingerprint") for r in runs}
    if len(fingerprints) > 1:
        log.warning("the runs' score settings (fingerprint) differ: the sweep mixes more than k")


def k_sweep_figure(runs: Sequence[Run]) -> Figure:
    """The headline metric (percent) against k, one colour per section: re-ranked solid, coarse dashed.

    Lines are labelled ``"SECTION, coarse"`` and ``"SECTION, re-ranked"``; a point a run lacks is NaN.

    Raises:
        ConfigError: No run, runs that differ in more than k (:data:`SWEEP_KEYS`), or two runs with the same k.
    """
    if not runs:
        raise ConfigError("a k sweep needs at least one evaluation run")
    _check_sweep(runs)
    runs = sorted(runs, key=lambda r: r.config.k)
    ks = [r.config.k for r in runs]
    sections: list[str] = []
    for r in runs:
        sections += [s for s in r.sections if s not in sections]
    fig = _new_figure(7.5, 4.8)
    ax = fig.add_subplot()
    colors = [f"C{i % 10}" for i in range(len(sections))]
    metrics = set()
    for section, color in zip(sections, colors, strict=True):
        points = [r.sections[section].headline() if section in r.sections else (None, None) for r in runs]
        metrics |= {r.sections[section].metric for r in runs if section in r.sections}
        for stage, idx, style in (("coarse", 0, "--"), ("re-ranked", 1, "-")):
            ys = [math.nan if p[idx] is None else 100 * float(p[idx] or 0) for p in points]
            if all(math.isnan(y) for y in ys):
                continue
            ax.plot(ks, ys, style, marker="o", color=color, label=f"{section}, {stage}")
    ax.set_xticks(ks)
    ax.set_xlabel("k (candidates re-ranked)")
    ax.set_ylabel(_metric_label(metrics) if metrics else "headline metric (%)")
    first = runs[0].config
    ax.set_title(
        f"{first.dataset} {first.split}: {first.scorer or 'coarse only'}\nembedder {first.embedder}", fontsize=10
    )
    # a column per section (legends fill column by column): its coarse line above its re-ranked one
    fig.legend(loc="outside lower center", ncols=min(4, max(1, len(sections))), fontsize=8)
    ax.grid(alpha=0.3)
    return fig


def plot_k_sweep(run_dirs: Sequence[str | Path], out_path: str | Path) -> Path:
    """Draw :func:`k_sweep_figure` of the runs in ``run_dirs`` to ``out_path`` (a PNG).

    Raises:
        ConfigError: A folder that is not a readable run, or runs that are not one sweep (the message names the
            key that differs and each run's value).
        MissingDependencyError: matplotlib is not installed.
    """
    runs = [load_run(p) for p in run_dirs]
    return _save(k_sweep_figure(runs), Path(out_path))
