"""``retllm``: index, search and demo commands. Settings are read here, once, and passed down."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from retllm.errors import CollectionNotFoundError, ConfigError, RetllmError
from retllm.settings import Settings, from_env
from retllm.types import VECTOR_NAMES, Hit, Query, VectorName

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Training-free multimodal retrieval: coarse CLIP search in Qdrant, fine MLLM re-ranking.",
)
index_app = typer.Typer(no_args_is_help=True, help="Build and manage collections.")
app.add_typer(index_app, name="index")

out = Console()
err = Console(stderr=True)
log = logging.getLogger(__name__)


class _State:
    settings: Settings | None = None


def settings() -> Settings:
    if _State.settings is None:
        _State.settings = from_env(Settings)
    return _State.settings


@app.callback()
def _main(verbose: Annotated[bool, typer.Option("-v", "--verbose", help="Log progress details.")] = False) -> None:
    logging.basicConfig(
        level=logging.INFO if verbose else logging.WARNING,
        stream=sys.stderr,
        format="%(levelname)s %(name)s: %(message)s",
    )


def _collection(name: str | None) -> str:
    return name or settings().collection


def _parse_filters(filters: list[str] | None) -> dict[str, str]:
    out_: dict[str, str] = {}
    for f in filters or []:
        key, sep, value = f.partition("=")
        if not sep or not key:
            raise ConfigError(f"--filter {f!r} must look like key=value")
        out_[key] = value
    return out_


def _ingestor(s: Settings, embedder: Any, index: Any, collection: str) -> Any:
    from retllm.ingest import Ingestor

    return Ingestor(
        embedder,
        index,
        collection,
        blob_dir=s.blob_dir,
        fusion_weight=s.fusion_weight,
        limits=s.image_limits,
        workers=s.decode_workers,
    )


CollectionOpt = Annotated[
    str | None, typer.Option("--collection", "-c", help="Collection (default RETLLM_COLLECTION).")
]


@index_app.command("add")
def index_add(
    paths: Annotated[list[Path], typer.Argument(help="Folders, JSONL/CSV manifests or single files.")],
    collection: CollectionOpt = None,
) -> None:
    """Embed and store images and texts; bad items are skipped and listed."""
    from retllm.ingest import iter_sources
    from retllm.registry import make_embedder, make_index

    s = settings()
    name = _collection(collection)
    sources = list(iter_sources(paths))
    with make_index(s) as index:
        if index.exists(name):
            index.dim(name)  # fail on a broken collection before loading the model
        embedder = make_embedder(s)
        report = _ingestor(s, embedder, index, name).run(sources, progress=True)
    err.print(
        f"added {report.added}, already present {report.already_present}, "
        f"duplicates in input {report.duplicates}, skipped {len(report.skipped)}",
        highlight=False,
    )
    for origin, reason in report.skipped:
        err.print(f"  skipped {origin}: {reason}", highlight=False, markup=False, soft_wrap=True)
    if report.added + report.already_present + report.duplicates == 0:
        raise typer.Exit(1)


@index_app.command("delete")
def index_delete(ids: Annotated[list[str], typer.Argument(help="Item ids.")], collection: CollectionOpt = None) -> None:
    """Delete items by id."""
    from retllm.registry import make_index

    with make_index(settings()) as index:
        name = _collection(collection)
        index.dim(name)
        n = index.delete(name, ids)
    out.print(f"deleted {n} of {len(ids)}")
    if n < len(ids):
        err.print(f"{len(ids) - n} id(s) were not in {name!r}")


@index_app.command("drop")
def index_drop(
    collection: Annotated[str, typer.Option("--collection", "-c", help="Collection to delete.")],
    yes: Annotated[bool, typer.Option("--yes", help="Confirm: this deletes every point.")] = False,
) -> None:
    """Delete a whole collection (a broken one too)."""
    from retllm.registry import make_index

    with make_index(settings()) as index:
        index.dim(collection)  # raises for an unknown collection
        why = index.broken(collection)
        what = "its items (broken: count unknown)" if why else f"{index.count(collection)} items"
        if not yes:
            raise ConfigError(f"dropping {collection!r} deletes {what}; repeat with --yes")
        index.drop_collection(collection)
    out.print(f"dropped {collection!r} ({what})")


@index_app.command("stats")
def index_stats(collection: CollectionOpt = None, as_json: Annotated[bool, typer.Option("--json")] = False) -> None:
    """Collections, their sizes and vector dimensions; a broken one is listed with why and how to repair it."""
    from retllm.registry import make_index

    s = settings()
    with make_index(s) as index:
        names = [_collection(collection)] if collection else index.list_collections()
        rows: list[dict[str, Any]] = []
        for n in names:
            dim, why = index.dim(n), index.broken(n)
            rows.append({"collection": n, "points": None if why else index.count(n), "dim": dim, "broken": why})
        where = s.qdrant_url or str(s.edge_dir)
    if as_json:
        out.print_json(json.dumps({"backend": where, "collections": rows}))
    else:
        t = Table(title=f"retllm index at {where}")
        for col in ("collection", "points", "dim"):
            t.add_column(col)
        for r in rows:
            t.add_row(str(r["collection"]), "broken" if r["broken"] else str(r["points"]), str(r["dim"]))
        out.print(t)
    for r in rows:
        if r["broken"]:
            err.print(f"broken: {r['broken']}", highlight=False, markup=False, soft_wrap=True)


@index_app.command("repair")
def index_repair(collection: CollectionOpt = None) -> None:
    """Rebuild a collection that will not open or read, keeping every item the store can read back and
    naming each one left out; the old store is kept (the command prints where)."""
    from retllm.registry import make_index

    name = _collection(collection)
    with make_index(settings()) as index, err.status(f"reading {name!r}"):
        report = index.repair(name)
    for what, why in report.dropped:
        err.print(f"  left out {what}: {why}", highlight=False, markup=False, soft_wrap=True)
    if report.backup is None:
        out.print(f"{name!r} opens and all {report.kept} items read back: nothing to repair")
        return
    out.print(
        f"repaired {name!r}: kept {report.kept} items, left out {len(report.dropped)}; "
        f"the old store is at {report.backup} (delete it when you no longer need it)",
        highlight=False,
    )


@index_app.command("optimize")
def index_optimize(collection: CollectionOpt = None) -> None:
    """Build the HNSW index of the embedded store (worth it past ~20k items; a server does this itself)."""
    import time

    from retllm.registry import make_index

    s = settings()
    name = _collection(collection)
    with make_index(s) as index:
        t0 = time.perf_counter()
        with err.status(f"building the HNSW index of {name!r}"):
            built = index.optimize(name)
        n = index.count(name)
    if built:
        out.print(f"optimized {name!r} ({n} items) in {time.perf_counter() - t0:.1f}s")
    else:
        out.print(
            f"nothing to do at {s.qdrant_url} ({n} items): a Qdrant server builds its index itself, "
            "local mode searches exhaustively"
        )


@index_app.command("export")
def index_export(
    output: Annotated[Path, typer.Option("--out", "-o", help="JSONL file to write.")],
    collection: CollectionOpt = None,
    vectors: Annotated[bool, typer.Option("--vectors/--no-vectors")] = False,
) -> None:
    """Write every item (payload, optionally vectors) as JSONL; items that cannot be read (a broken
    collection) are left out and listed."""
    from retllm.registry import make_index

    n, skipped = 0, []
    with make_index(settings()) as index:
        name = _collection(collection)
        index.dim(name)  # an unknown collection: one line, before the file is created
        with output.open("w") as f:
            for rec in index.salvage(name, lambda what, why: skipped.append((what, why))):
                row: dict[str, Any] = {"id": rec.id, **{k: v for k, v in rec.payload.items() if k != "retllm_id"}}
                if vectors:
                    row["vectors"] = {k: v.tolist() for k, v in rec.vectors.items()}
                f.write(json.dumps(row) + "\n")
                n += 1
    for what, why in skipped:
        err.print(f"  left out {what}: {why}", highlight=False, markup=False, soft_wrap=True)
    err.print(f"exported {n} items to {output}" + (f"; left out {len(skipped)}" if skipped else ""))


@index_app.command("migrate")
def index_migrate(
    to: Annotated[str, typer.Option("--to", help="Qdrant URL (or ':memory:'/folder for local mode).")],
    collection: CollectionOpt = None,
    api_key: Annotated[str | None, typer.Option("--api-key", envvar="RETLLM_MIGRATE_API_KEY")] = None,
) -> None:
    """Copy a collection from the embedded store to a Qdrant server, vectors and payloads; verify counts."""
    from retllm.index.edge import EdgeIndex
    from retllm.index.migrate import migrate
    from retllm.index.qdrant import QdrantIndex

    s = settings()
    name = _collection(collection)
    with EdgeIndex(s.edge_dir) as src, QdrantIndex(to, api_key=api_key) as dst:
        n = migrate(src, dst, name, progress=True)
    out.print(f"migrated {n} items of {name!r} to {to}; counts verified")


def _print_hits(hits: list[Hit], *, as_json: bool, title: str) -> None:
    if as_json:
        sys.stdout.write(json.dumps([h.model_dump() for h in hits], indent=2) + "\n")
        return
    fine = any(h.score is not None for h in hits)
    t = Table(title=title)
    middle = ["score", "method", "retraced", "was"] if fine else ["matched"]
    cols = ["rank", "id", "coarse", *middle, "text", "image"]
    for col in cols:
        t.add_column(col, overflow="fold")
    for h in hits:
        row = [str(h.rank), h.id[:12], f"{h.coarse_score:.4f}"]
        if fine:
            row += [
                f"{h.score:.4f}" if h.score is not None else "",
                h.method or "",
                "" if h.retraced is None else f"L{h.retraced}",
                f"#{h.coarse_rank}" if h.coarse_rank else "",
            ]
        else:
            row += [h.vector or ""]
        row += [(h.text or "")[:50], Path(h.image).name if h.image else ""]
        t.add_row(*row)
    out.print(t)


def _vector_option(vector: str) -> VectorName | None:
    """``--vector``'s value as the stored vector kind to match (``None``: auto); anything else is refused."""
    if vector == "auto":
        return None
    if vector not in VECTOR_NAMES:
        raise ConfigError(f"--vector must be auto or one of {', '.join(VECTOR_NAMES)}, got {vector!r}")
    return vector  # type: ignore[return-value]


@app.command("search")
def search(
    text: Annotated[str | None, typer.Argument(help="Query text.")] = None,
    image: Annotated[str | None, typer.Option("--image", help="Query image: path or URL.")] = None,
    k: Annotated[int, typer.Option("-k", min=1, help="Coarse pool size (top-k) the MLLM re-ranks.")] = 10,
    top: Annotated[int | None, typer.Option("--top", min=1, help="Results shown (default all k).")] = None,
    filters: Annotated[
        list[str] | None, typer.Option("--filter", help="key=value payload filter (repeatable).")
    ] = None,
    collection: CollectionOpt = None,
    coarse_only: Annotated[bool, typer.Option("--coarse-only", help="Skip the MLLM fine stage.")] = False,
    vector: Annotated[str, typer.Option("--vector", help="Stored vector to match: auto, image, text, fused.")] = "auto",
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of a table.")] = False,
    html_out: Annotated[Path | None, typer.Option("--html", help="Also write an HTML gallery of the hits.")] = None,
    scorer_id: Annotated[str | None, typer.Option("--scorer", help="Override RETLLM_SCORER for this call.")] = None,
    min_score: Annotated[
        float | None,
        typer.Option(
            "--min-score",
            min=0.0,
            max=1.0,
            help="Drop hits whose fine score (two-way P(True)) is below this (default RETLLM_MIN_SCORE); "
            "a query with no good match then returns nothing.",
        ),
    ] = None,
) -> None:
    """Search a collection with text, an image, or both."""
    from retllm.pipeline import Retriever
    from retllm.registry import make_embedder, make_index, make_scorer

    query = Query(text=text, image=image)  # raises EmptyQueryError before any model loads
    using = _vector_option(vector)
    flt = _parse_filters(filters)
    s = settings()
    name = _collection(collection)
    if min_score is not None and coarse_only:
        raise ConfigError("--min-score filters fine scores; it cannot be used with --coarse-only")
    threshold = min_score if min_score is not None else (None if coarse_only else s.min_score)
    with make_index(s) as index:
        if not index.exists(name):
            raise CollectionNotFoundError(
                f"no collection {name!r}; existing: {', '.join(index.list_collections()) or 'none'} "
                "(create one with: retllm index add PATH)"
            )
        index.dim(name)
        scorer = None if coarse_only else make_scorer(s, scorer_id)
        try:
            retriever = Retriever(
                make_embedder(s),
                index,
                name,
                scorer=scorer,
                fusion_weight=s.fusion_weight,
                limits=s.image_limits,
            )
            hits = retriever.search(
                query, k=k, top=top, flt=flt or None, using=using, coarse_only=coarse_only, min_score=threshold
            )
        finally:
            if scorer is not None:
                scorer.close()  # after a failed search, requests still in flight stop instead of holding the exit
    stage = "coarse" if coarse_only else f"re-ranked by {scorer_id or s.scorer}"
    if threshold is not None:
        stage += f", score >= {threshold:g}"
        if not hits and not as_json:
            err.print(f"no hit reached --min-score {threshold:g}", highlight=False)
    title = f"{query.modality} query on {name!r} ({stage})"
    _print_hits(hits, as_json=as_json, title=title)
    if html_out is not None:
        from retllm.gallery import write_gallery

        err.print(f"gallery: {write_gallery(html_out, [(title, hits)], title=query.text or str(query.image))}")


@app.command("demo")
def demo(
    collection: Annotated[str, typer.Option("--collection", "-c")] = "demo",
    k: Annotated[int, typer.Option("-k", min=1, help="Coarse pool size the MLLM re-ranks.")] = 5,
    coarse_only: Annotated[bool, typer.Option("--coarse-only", help="Skip the MLLM fine stage.")] = False,
    html_out: Annotated[Path | None, typer.Option("--html", help="Gallery file (default DATA_DIR/demo.html).")] = None,
    scorer_id: Annotated[str | None, typer.Option("--scorer", help="Override RETLLM_SCORER for this call.")] = None,
) -> None:
    """Generate a small scene collection, ingest it, and show coarse vs. re-ranked results for a few queries."""
    from retllm.demo import DEMO_IMAGE_SIDE, DEMO_QUERIES, build_demo_dataset
    from retllm.ingest import iter_sources
    from retllm.pipeline import Retriever
    from retllm.registry import make_embedder, make_index, make_scorer

    s = settings()
    folder = s.data_dir / "demo-data"
    manifest = build_demo_dataset(folder)
    embedder = make_embedder(s)
    if s.scorer_image_side is None and not coarse_only:
        # The scenes are 224 px: a tiling model (the default SmolVLM) would upscale each to up to 17 tiles.
        s = s.model_copy(update={"scorer_image_side": DEMO_IMAGE_SIDE})
        err.print(f"demo: the MLLM sees the scenes at up to {DEMO_IMAGE_SIDE} px (RETLLM_SCORER_IMAGE_SIDE to change)")
    scorer = None if coarse_only else make_scorer(s, scorer_id)
    with make_index(s) as index:
        report = _ingestor(s, embedder, index, collection).run(iter_sources([manifest]), progress=True)
        err.print(f"demo collection {collection!r}: added {report.added}, already present {report.already_present}")
        r = Retriever(embedder, index, collection, scorer=scorer, fusion_weight=s.fusion_weight, limits=s.image_limits)
        probe = folder / "red_circle_white.png"
        queries = [(Query(text=q), f"text -> image: {q!r}") for q in DEMO_QUERIES]
        queries.append((Query(image=str(probe)), f"image -> image: {probe.name}"))
        sections: list[tuple[str, list[Hit]]] = []
        try:
            for q, title in queries:
                coarse = r.coarse(q, k=k, using="image")
                sections.append((f"{title}: coarse order", coarse))
                if scorer is None:
                    _print_hits(coarse, as_json=False, title=f"{title} (coarse)")
                    continue
                fine = r.rerank(q, coarse, candidate_text=False)
                sections.append((f"{title}: re-ranked by {scorer_id or s.scorer}", fine))
                _print_side_by_side(coarse, fine, title)
        finally:
            if scorer is not None:
                scorer.close()
    from retllm.gallery import write_gallery

    err.print(f"gallery: {write_gallery(html_out or s.data_dir / 'demo.html', sections, title='retllm demo')}")


def _print_side_by_side(coarse: list[Hit], fine: list[Hit], title: str) -> None:
    t = Table(title=title)
    for col in ("rank", "coarse order", "cos", "re-ranked order", "score", "retraced"):
        t.add_column(col)

    def name(h: Hit) -> str:
        return Path(h.image).stem if h.image else h.id[:12]

    for c, f in zip(coarse, fine, strict=True):
        score = f"{f.score:.3f}" if f.score is not None else ""
        t.add_row(
            str(c.rank),
            name(c),
            f"{c.coarse_score:.3f}",
            name(f),
            score,
            "" if f.retraced is None else f"L{f.retraced}",
        )
    out.print(t)


@app.command("eval")
def evaluate(
    dataset: Annotated[
        str,
        typer.Argument(
            help="Benchmark: flickr30k, coco, urban1k, sharegpt4v, mbeir, sugarcrepe, mmeb; or 'compare' to print "
            "earlier runs side by side."
        ),
    ],
    runs: Annotated[
        list[Path] | None,
        typer.Argument(help="With 'compare': run folders (or their results.json).", show_default=False),
    ] = None,
    data: Annotated[Path | None, typer.Option("--data", help="Folder holding the benchmark's files.")] = None,
    split: Annotated[str, typer.Option("--split", help="Split to evaluate.")] = "test",
    limit: Annotated[
        int | None,
        typer.Option("--limit", min=1, help="Only the first N images (mbeir, mmeb, sugarcrepe: N per task)."),
    ] = None,
    ks: Annotated[
        list[int] | None,
        typer.Option("--k", "-k", min=1, help="Coarse pool size the MLLM re-ranks; repeat for a sweep (--k 3 --k 5)."),
    ] = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out", help="Results folder (default DATA_DIR/eval/DATASET-SPLIT[-PRESET]-MODE[-limitN], MODE e.g. k5)."
        ),
    ] = None,
    coarse_only: Annotated[bool, typer.Option("--coarse-only", help="Skip the MLLM fine stage.")] = False,
    preset: Annotated[
        str | None, typer.Option("--preset", help="paper (k=5, Qwen2.5-VL-7B, CLIP ViT-L/14@336) or small.")
    ] = None,
    tasks: Annotated[
        list[str] | None,
        typer.Option(
            "--task", help="Repeatable. mbeir: a task (mscoco_task0...); mmeb: a subset; sugarcrepe: a category."
        ),
    ] = None,
    plots: Annotated[bool, typer.Option("--plots/--no-plots", help="Write PNG plots beside the results.")] = True,
    listwise: Annotated[
        bool, typer.Option("--listwise", help="mmeb: one listwise call over the top-k (text candidates only).")
    ] = False,
    rounds: Annotated[
        int | None,
        typer.Option(
            "--rounds", min=1, help="Listwise calls per question in shifted option orders (sugarcrepe: 2 = both)."
        ),
    ] = None,
    keep_instructions: Annotated[
        bool,
        typer.Option(
            "--keep-instructions",
            help="mmeb: keep the texts written for embedding models ('Represent the given image.', 'Find me an "
            "everyday image that matches the given caption:'); dropped by default.",
        ),
    ] = False,
    vector: Annotated[
        str,
        typer.Option(
            "--vector",
            help="mmeb: stored vector to match: auto (the query's kinds, fused by rank), image, text, fused.",
        ),
    ] = "auto",
) -> None:
    """Coarse and re-ranked quality (R@1/5/10, accuracy, P@1), latency and cost; writes results.json, report.md, PNGs.

    Scores are cached in DATA_DIR/eval/scores.sqlite: a rerun only sends pairs the model has not judged yet, and
    a larger k only the new pairs. `retllm eval compare RUN...` prints runs side by side.
    """
    if dataset == "compare":
        from retllm.eval.compare import compare_runs

        if not runs:
            raise ConfigError("eval compare: name one or more run folders")
        sys.stdout.write(compare_runs(runs) + "\n")
        return
    if runs:
        raise ConfigError(f"unexpected argument(s) after {dataset!r}: {' '.join(map(str, runs))}")
    if listwise and dataset != "mmeb":
        raise ConfigError("--listwise is for mmeb (sugarcrepe is always listwise)")
    if rounds is not None and not (dataset == "sugarcrepe" or (dataset == "mmeb" and listwise)):
        raise ConfigError("--rounds is for the listwise benchmarks: sugarcrepe, mmeb --listwise")
    if coarse_only and (listwise or rounds is not None):
        raise ConfigError("--coarse-only runs no model: --listwise and --rounds do not apply")
    if dataset != "mmeb" and (keep_instructions or vector != "auto"):
        raise ConfigError("--keep-instructions and --vector are for mmeb (the other benchmarks set them per direction)")
    using = _vector_option(vector)
    if data is None:
        raise ConfigError("--data is required: the folder holding the benchmark's files")
    if not data.is_dir():
        raise ConfigError(f"--data {data}: no such folder")
    s = settings()
    chosen = None
    if preset is not None:
        from retllm.eval.presets import apply_preset

        s, chosen = apply_preset(preset, s)
    if dataset == "sugarcrepe" and ks:
        raise ConfigError("sugarcrepe asks two-option questions: --k does not apply")
    k_values = sorted(set(ks or [chosen.k if chosen else 10]))
    if coarse_only or dataset == "sugarcrepe":
        k_values = k_values[:1]
    evalset = _load_eval(dataset, data, split=split, limit=limit, tasks=tasks, keep_instructions=keep_instructions)
    from retllm.registry import make_embedder, make_index, make_scorer

    stem = f"{dataset}-{split}" + (f"-{preset}" if preset else "")
    lim = f"-limit{limit}" if limit else ""
    sweep = len(k_values) > 1
    base = out_dir or s.data_dir / "eval" / (f"{stem}-sweep{lim}" if sweep else stem)
    targets = []
    with make_index(s) as index:
        embedder = make_embedder(s)
        scorer = None if coarse_only else make_scorer(s)
        try:
            for k in k_values:
                mode = _run_name(dataset, k, coarse_only=coarse_only, listwise=listwise, rounds=rounds)
                mode += ("-inst" if keep_instructions else "") + (f"-{vector}" if vector != "auto" else "")
                if sweep:
                    target = base / mode
                else:
                    target = out_dir or s.data_dir / "eval" / f"{stem}-{mode}{lim}"
                extra = {"preset": {"name": chosen.name, "k": chosen.k, "settings": chosen.settings}} if chosen else {}
                results = _run_one_eval(
                    evalset,
                    s,
                    embedder=embedder,
                    index=index,
                    scorer=scorer,
                    k=k,
                    target=target,
                    limit=limit,
                    extra=extra,
                    listwise=listwise,
                    rounds=rounds,
                    using=using,
                )
                targets.append(target)
                _print_eval(results, target, plots)
        finally:
            if scorer is not None:
                scorer.close()
    if plots and sweep:
        from retllm.eval.plots import plot_k_sweep

        err.print(f"R@1 against k: {plot_k_sweep(targets, base / 'recall_vs_k.png')}", highlight=False, markup=False)


def _run_name(dataset: str, k: int, *, coarse_only: bool, listwise: bool, rounds: int | None) -> str:
    """The default run folder's mode part: runs that differ in how the model is asked never share a folder."""
    if coarse_only:
        return "coarse"
    if dataset == "sugarcrepe":
        return "listwise" if rounds in (None, 2) else f"listwise-r{rounds}"
    if listwise:
        return f"k{k}-listwise-r{rounds or 1}"
    return f"k{k}"


def _load_eval(
    dataset: str, data: Path, *, split: str, limit: int | None, tasks: list[str] | None, keep_instructions: bool
) -> Any:
    """The benchmark's loaded data: an EvalSet (retrieval sets) or the candidate-list set (sugarcrepe, mmeb)."""
    if dataset in ("sugarcrepe", "mmeb"):
        from retllm.eval.choice import load_mmeb, load_sugarcrepe

        if split != "test":
            raise ConfigError(f"{dataset} has only the 'test' split, got {split!r}")
        if dataset == "sugarcrepe":
            return load_sugarcrepe(data, categories=tasks, limit=limit)
        return load_mmeb(data, subsets=tasks, limit=limit, keep_instructions=keep_instructions)
    from retllm.eval.datasets import load

    return load(dataset, data, split=split, limit=limit, tasks=tasks)


def _run_one_eval(
    evalset: Any,
    s: Settings,
    *,
    embedder: Any,
    index: Any,
    scorer: Any,
    k: int,
    target: Path,
    limit: int | None,
    extra: dict[str, Any],
    listwise: bool,
    rounds: int | None,
    using: VectorName | None,
) -> dict[str, Any]:
    from retllm.eval.cache import default_cache_path, settings_fingerprint
    from retllm.eval.choice import MMEBSet, SugarCrepeSet, run_mmeb, run_sugarcrepe
    from retllm.eval.runner import run_eval

    common: dict[str, Any] = {
        "embedder": embedder,
        "scorer": scorer,
        "out_dir": target,
        "cache_path": default_cache_path(s.data_dir),
        "fingerprint": settings_fingerprint(s),
        "limit": limit,
        "limits": s.image_limits,
        "extra_config": extra,
    }
    if isinstance(evalset, SugarCrepeSet):
        return run_sugarcrepe(evalset, rounds=2 if rounds is None else rounds, **common)
    if isinstance(evalset, MMEBSet):
        return run_mmeb(
            evalset,
            index=index,
            k=k,
            listwise=listwise,
            rounds=1 if rounds is None else rounds,
            using=using,
            fusion_weight=s.fusion_weight,
            **common,
        )
    return run_eval(
        evalset,
        embedder=embedder,
        index=index,
        scorer=scorer,
        k=k,
        out_dir=target,
        cache_path=default_cache_path(s.data_dir),
        fingerprint=settings_fingerprint(s),
        limit=limit,
        fusion_weight=s.fusion_weight,
        limits=s.image_limits,
        extra_config=extra,
    )


def _print_eval(results: dict[str, Any], target: Path, plots: bool) -> None:
    """The report on stdout; skipped entries, the files written and the plots on stderr."""
    from retllm.eval.report import report_markdown

    sys.stdout.write(report_markdown(results) + "\n")
    for p in results["problems"]["items"][:10]:
        err.print(f"  skipped {p}", highlight=False, markup=False)
    if results["problems"]["count"] > 10:
        err.print(f"  ... {results['problems']['count'] - 10} more in results.json", highlight=False, markup=False)
    written = [target / "results.json", target / "report.md"]
    if plots:
        from retllm.errors import MissingDependencyError
        from retllm.eval.plots import plot_run

        try:
            written += plot_run(target)
        except MissingDependencyError as e:  # the numbers are written; the pictures need the plot extra
            err.print(f"plots skipped: {e}", highlight=False, markup=False)
    err.print("results: " + ", ".join(map(str, written)), highlight=False, markup=False)


@app.command("config")
def show_config() -> None:
    """Print the effective settings (secrets masked)."""
    out.print_json(json.dumps(settings().model_dump(mode="json")))  # SecretStr fields dump as "**********"


def _plugins() -> None:
    """Commands that live above the library (``chat``, ``mcp`` from ``retllm.agent``) register themselves
    through the ``retllm.cli`` entry points, so this module never imports them."""
    from importlib.metadata import entry_points

    for ep in entry_points(group="retllm.cli"):
        try:
            register = ep.load()
        except ImportError as e:  # an extra that is not installed: its commands say so when asked for
            log.debug("CLI plugin %s not loaded: %s", ep.name, e)
            continue
        register(app)


def main() -> None:
    """Console entry point: RetllmError becomes one line on stderr and exit code 1."""
    _plugins()
    try:
        app()
    except RetllmError as e:
        err.print(f"error: {e}", highlight=False, markup=False, soft_wrap=True)
        sys.exit(1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)


if __name__ == "__main__":
    main()
