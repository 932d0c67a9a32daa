"""The MCP server: retllm's search, add, delete and list-collections tools for any MCP host (``retllm mcp``).

The tools call :mod:`retllm.tools.ops`, the same functions as the LangChain tools. ``search`` answers with
thumbnails of the ranked hits (image content), a short text for the host model, and structured content that
follows the published output schema (:class:`McpSearchOut`). Every item's full image is a resource
(``retllm://{collection}/{item_id}/image``), and hosts that support MCP Apps render results with the
``ui://retllm/gallery`` page.

Errors the host model can fix (bad arguments, an unknown collection, an unreadable image) come back as tool
results with ``isError`` and what to change; infrastructure errors come back the same way (a server must not
crash) with a prefix that says they are not the caller's fault.
"""

from __future__ import annotations

import base64
import functools
import inspect
import io
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from typing import Annotated, Any, BinaryIO, Literal
from urllib.parse import quote, unquote

import anyio
import anyio.to_thread
from mcp.server.fastmcp import FastMCP
from mcp.server.fastmcp.exceptions import ResourceError, ToolError
from mcp.server.lowlevel.helper_types import ReadResourceContents
from mcp.types import CallToolResult, ContentBlock, ImageContent, ResourceTemplate, TextContent, ToolAnnotations
from pydantic import AnyUrl, BaseModel, Field, ValidationError, WithJsonSchema
from retllm.tools import ops
from retllm.tools.deps import Deps
from retllm.tools.schemas import (
    AddItemsArgs,
    AddOut,
    CollectionsOut,
    DeleteItemsArgs,
    DeleteOut,
    HitOut,
    SearchArgs,
    SearchOut,
)

from retllm.access import (
    BEARER_REFUSED,
    AccessSettings,
    bearer_ok,
    check_bind,
    host_allowed,
    host_refused,
    is_loopback,
    refuse,
)
from retllm.errors import ConfigError
from retllm.images import encode_thumbnail, image_mime
from retllm.redact import redact, redact_data
from retllm.settings import Settings, from_env

log = logging.getLogger(__name__)

IMAGE_TEMPLATE = "retllm://{collection}/{item_id}/image"
GALLERY_URI = "ui://retllm/gallery"
APP_MIME = "text/html;profile=mcp-app"
"""MCP Apps (SEP-1865): a ``ui://`` HTML resource a host renders in a sandboxed iframe, linked from a tool's
``_meta.ui.resourceUri``. The SDK has no helpers for it; plain resources and tool ``_meta`` carry it."""

SERVER_FAULT = "Server-side failure (not caused by your arguments; retrying will not help until it is fixed):"

INSTRUCTIONS = (
    "retllm searches a collection of images and texts: a fast embedding search finds candidates, then a visual "
    "judge (a multimodal LLM) looks at each one and re-ranks them. Use search to find things; the results carry "
    "ids, scores (0-1, the judge's probability of a match), thumbnails and a resource URI for each full image."
)
SEARCH = (
    "Search the image and text collection; results are ranked by a visual judge that looks at every candidate "
    "(a multimodal LLM scores each one). Search with words, an image (a file path on the server's machine or an "
    "http(s) URL), or both. To refine, call again with more words or a filter. Returns a text summary, thumbnails "
    "of the results that have images (in rank order), and structured results: ids, ranks, scores (0-1, the "
    "judge's probability of a match), first-stage ranks and similarities, and a resource URI per full image. "
    "With min_score, an empty result means nothing matches well: say so plainly, do not offer weak matches."
)
ADD_ITEMS = (
    "Add images and/or texts to a collection (created when missing). Images are file paths on the server's "
    "machine or http(s) URLs. Items already stored are not added twice; bad items are skipped and reported."
)
DELETE_ITEMS = "Delete items from a collection by id (the ids search returns). Ids not in the collection are reported."
LIST_COLLECTIONS = "List the collections with their item counts and vector sizes."
_IMAGE_ARG = "An image to search with: a file path on the server's machine or an http(s) URL."
_DELETE_FROM = "Collection to delete from (default: the configured one)."


class McpHit(HitOut):
    """One ranked result, with the MCP resource of its full image."""

    resource_uri: str | None = Field(
        default=None, description="MCP resource with the item's full image (resources/read); null: no image."
    )


class McpSearchOut(SearchOut):
    """A search's results: ranked hits with provenance and image resources, and what was searched."""

    hits: list[McpHit]


def image_uri(collection: str, item_id: str) -> str:
    """The resource URI of an item's full image (the id is percent-encoded: ids may hold any character)."""
    return IMAGE_TEMPLATE.format(collection=collection, item_id=quote(item_id, safe=""))


def parse_http(value: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[::1]:8000`` for IPv6) as (host, port), or :class:`ConfigError`."""
    host, sep, port = value.strip().rpartition(":")
    host = host.removeprefix("[").removesuffix("]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"--http {value!r}: expected HOST:PORT with a port from 1 to 65535, e.g. 127.0.0.1:8000")
    return host, int(port)


# --- thumbnails ------------------------------------------------------------------------------------------------


def thumbnail(deps: Deps, hit: HitOut) -> ImageContent | None:
    """The hit's image, longest side at most ``thumbnail_size``, as JPEG or PNG (whichever is smaller)."""
    if not hit.image:
        return None
    try:
        im = deps.settings.image_limits.load(hit.image, fit_side=deps.settings.thumbnail_size)
    except ops.RECOVERABLE as e:  # a moved file or a dead URL costs the thumbnail, not the search
        log.warning("no thumbnail for %s: %s", hit.id, e)
        return None
    data, mime = encode_thumbnail(im, deps.settings.thumbnail_size)
    return ImageContent(
        type="image",
        data=base64.b64encode(data).decode(),
        mimeType=mime,
        _meta={"retllm/id": hit.id, "retllm/rank": hit.rank},
    )


# --- argument schemas ------------------------------------------------------------------------------------------


def _inline_refs(node: Any, defs: dict[str, Any]) -> Any:
    if isinstance(node, dict):
        ref = node.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/$defs/"):
            return _inline_refs(defs[ref.removeprefix("#/$defs/")], defs)
        return {k: _inline_refs(v, defs) for k, v in node.items()}
    if isinstance(node, list):
        return [_inline_refs(v, defs) for v in node]
    return node


def _signature(model: type[BaseModel], returns: Any, drop: Iterable[str] = (), **described: str) -> inspect.Signature:
    """Tool parameters that publish ``model``'s JSON schema, field by field, but accept anything: ``model`` itself
    validates the arguments in the tool, so the checks and the messages are those of every other tool layer."""
    schema = model.model_json_schema()
    defs = schema.get("$defs", {})
    params = []
    for name, field in model.model_fields.items():
        if name in drop:
            continue
        prop = _inline_refs(schema["properties"][name], defs)
        prop = {k: v for k, v in prop.items() if k not in ("title", "default")} | (
            {"description": described[name]} if name in described else {}
        )
        default = inspect.Parameter.empty if field.is_required() else field.get_default(call_default_factory=True)
        params.append(
            inspect.Parameter(
                name, inspect.Parameter.KEYWORD_ONLY, default=default, annotation=Annotated[Any, WithJsonSchema(prop)]
            )
        )
    return inspect.Signature(params, return_annotation=returns)


def _tool_fn(work: Callable[..., CallToolResult], sig: inspect.Signature) -> Callable[..., Any]:
    """An async tool function with signature ``sig`` that runs ``work(**arguments)`` in a worker thread (models and
    the index block) and turns its errors into tool errors (``isError`` results)."""

    async def tool(**kwargs: Any) -> CallToolResult:
        return await anyio.to_thread.run_sync(functools.partial(_guarded, work, kwargs))

    tool.__name__ = work.__name__
    tool.__signature__ = sig  # type: ignore[attr-defined]
    return tool


def _guarded(work: Callable[..., CallToolResult], kwargs: dict[str, Any]) -> CallToolResult:
    try:
        return work(**kwargs)
    except ValidationError as e:
        raise ToolError(ops.validation_message(e)) from e
    except ops.RECOVERABLE as e:
        raise ToolError(str(e)) from e
    except Exception as e:
        log.exception("tool call failed")
        raise ToolError(f"{SERVER_FAULT} {type(e).__name__}: {redact(str(e))}") from e  # the log has the paths


# --- the server ------------------------------------------------------------------------------------------------


class RetllmMCP(FastMCP):
    """FastMCP that refuses unknown arguments (FastMCP drops them) and serves item images under their own MIME
    type (FastMCP gives a resource template one fixed type)."""

    async def call_tool(self, name: str, arguments: dict[str, Any]) -> Any:
        tool = next((t for t in await self.list_tools() if t.name == name), None)
        if tool is not None:  # an unknown tool: FastMCP's own error
            props, required = tool.inputSchema.get("properties", {}), tool.inputSchema.get("required", [])
            problems = [f"{k}: Extra inputs are not permitted" for k in arguments if k not in props]
            problems += [f"{k}: Field required" for k in required if k not in arguments]
            if problems:
                raise ToolError("Invalid arguments, fix and call again:\n" + "\n".join(problems))
        return await super().call_tool(name, arguments)

    async def list_resource_templates(self) -> list[ResourceTemplate]:
        # Images differ in type: list no MIME type rather than FastMCP's default text/plain.
        return [
            t.model_copy(update={"mimeType": None}) if t.uriTemplate == IMAGE_TEMPLATE else t
            for t in await super().list_resource_templates()
        ]

    async def read_resource(self, uri: AnyUrl | str) -> Iterable[ReadResourceContents]:
        contents = list(await super().read_resource(uri))
        if not str(uri).startswith("retllm://"):
            return contents
        return [
            ReadResourceContents(c.content, image_mime(c.content), c.meta) if isinstance(c.content, bytes) else c
            for c in contents
        ]


class _ImageRefs:
    """Image references of recent hits by (collection, id), so reading a hit's image skips a scan of the index
    (the index role has no fetch-by-id yet); an unknown id falls back to scrolling the collection."""

    def __init__(self, limit: int = 10_000) -> None:
        self._refs: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._limit = limit

    def remember(self, collection: str, hits: Iterable[HitOut]) -> None:
        with self._lock:
            for h in hits:
                if h.image:
                    self._refs.pop((collection, h.id), None)
                    self._refs[(collection, h.id)] = h.image
            while len(self._refs) > self._limit:
                self._refs.pop(next(iter(self._refs)))

    def forget(self, collection: str, ids: Iterable[str]) -> None:
        with self._lock:
            for i in ids:
                self._refs.pop((collection, i), None)

    def find(self, deps: Deps, collection: str, item_id: str) -> str:
        index = deps.get_index()
        if not index.exists(collection):
            raise ResourceError(f"no collection {collection!r}")
        if not index.existing(collection, [item_id]):
            raise ResourceError(f"no item {item_id!r} in collection {collection!r}")
        with self._lock:
            ref = self._refs.get((collection, item_id))
        if ref is None:
            rec = next((r for r in index.scroll(collection) if r.id == item_id), None)
            ref = rec.payload.get("image") if rec is not None else None
        if not ref:
            raise ResourceError(f"item {item_id!r} in collection {collection!r} has no image")
        return str(ref)


def _transport_security(host: str, names: frozenset[str] = frozenset()) -> Any:
    """FastMCP's own DNS-rebinding check on a loopback bind (its exact loopback names, plus ``names``: the
    allow-list's and the public URL's hosts); None elsewhere, where the token and :class:`HttpGuard` stand."""
    if not is_loopback(host):
        return None
    from mcp.server.transport_security import TransportSecuritySettings

    if "*" in names:  # the operator turned Host checks off
        return TransportSecuritySettings(enable_dns_rebinding_protection=False)
    shown = f"[{host}]" if ":" in host else host
    hosts = [f"{shown}:*", "127.0.0.1:*", "localhost:*", "[::1]:*"]
    hosts += [n if ":" in n else f"{n}:*" for n in sorted(names)] + [n for n in sorted(names) if ":" not in n]
    origins = [f"http://{shown}:*", "http://127.0.0.1:*", "http://localhost:*", "http://[::1]:*"]
    return TransportSecuritySettings(enable_dns_rebinding_protection=True, allowed_hosts=hosts, allowed_origins=origins)


class HttpGuard:
    """The streamable-HTTP app behind the rules of :mod:`retllm.access`, as ``retllm serve`` applies them:
    a ``Host`` that is not a name of this server gets 421 (DNS rebinding), a request without the bearer
    token (when ``RETLLM_API_TOKEN`` is set) gets 401 with the service's message."""

    def __init__(self, app: Any, access: AccessSettings) -> None:
        self.app = app
        self.token = access.token
        self.names = access.host_names

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
            host = headers.get("host")
            if not host_allowed(host, self.names):
                await refuse(send, 421, host_refused(host))
                return
            if not bearer_ok(headers.get("authorization"), self.token):
                await refuse(send, 401, BEARER_REFUSED, www_authenticate="Bearer")
                return
        await self.app(scope, receive, send)


def build_server(
    deps: Deps, *, host: str = "127.0.0.1", port: int = 8000, access: AccessSettings | None = None
) -> FastMCP:
    """The MCP server over ``deps`` (models load on the first tool call). ``host``/``port``: streamable HTTP
    (served by :func:`serve_http`, which applies ``access``; here only its host names are read)."""
    security = _transport_security(host, access.host_names if access is not None else frozenset())
    server = RetllmMCP(
        "retllm",
        instructions=INSTRUCTIONS,
        host=host,
        port=port,
        log_level=_log_level(),
        transport_security=security,
    )
    refs = _ImageRefs()

    def search(**kw: Any) -> CallToolResult:
        args = SearchArgs(**kw)
        out = ops.search(deps, args, ops.query_image_ref(deps, args.image, fine=True))
        refs.remember(out.collection, out.hits)
        hits = [
            McpHit(**h.model_dump(), resource_uri=image_uri(out.collection, h.id) if h.image else None)
            for h in out.hits
        ]
        result = McpSearchOut(**out.model_dump(exclude={"hits"}), hits=hits)
        thumbs = [(h.rank, t) for h in out.hits if (t := thumbnail(deps, h)) is not None]
        text = ops.summary(out)
        if thumbs:
            text += f"\nThumbnails of results {', '.join(str(r) for r, _ in thumbs)} follow, in that order."
        if any(h.resource_uri for h in hits):
            where = IMAGE_TEMPLATE.format(collection=out.collection, item_id="{id}")
            text += f"\nFull images are the resources {where}, the id percent-encoded."
        content: list[ContentBlock] = [TextContent(type="text", text=text), *(t for _, t in thumbs)]
        return CallToolResult(content=content, structuredContent=result.model_dump(mode="json"))

    def add_items(**kw: Any) -> CallToolResult:
        out = ops.add_items(deps, AddItemsArgs(**kw))
        text = f"Added {out.added} item(s) to {out.collection!r}; {out.already_present} already present."
        if out.skipped:
            text += " Skipped: " + "; ".join(f"{s['item']}: {s['reason']}" for s in out.skipped)
        return _result(text, out)

    def delete_items(**kw: Any) -> CallToolResult:
        out = ops.delete_items(deps, DeleteItemsArgs(**kw))
        refs.forget(out.collection, kw.get("ids") or [])
        text = f"Deleted {out.deleted} item(s) from {out.collection!r}."
        if out.missing:
            text += f" Not found: {', '.join(out.missing[:20])}."
        return _result(text, out)

    def list_collections() -> CallToolResult:
        out = ops.list_collections(deps)
        return _result("; ".join(f"{c.name} ({c.items} items)" for c in out.collections) or "no collections yet", out)

    def add(
        work: Callable[..., CallToolResult],
        sig: inspect.Signature,
        title: str,
        description: str,
        hints: ToolAnnotations,
        meta: dict[str, Any] | None = None,
    ) -> None:
        if access is not None:  # over HTTP the caller is remote: no server path in what goes back (as the service)
            work = _hide_paths(work)
        server.add_tool(_tool_fn(work, sig), title=title, description=description, annotations=hints, meta=meta)

    def returns(model: type[BaseModel]) -> Any:
        return Annotated[CallToolResult, model]  # FastMCP: publish the model's schema, pass the result through

    app = {"ui": {"resourceUri": GALLERY_URI}, "ui/resourceUri": GALLERY_URI}  # the flat key: earlier hosts
    add(
        search,
        _signature(SearchArgs, returns(McpSearchOut), drop=["like"], image=_IMAGE_ARG),
        "Search images and texts",
        SEARCH,
        ToolAnnotations(readOnlyHint=True, openWorldHint=True),
        app,
    )
    add(
        add_items,
        _signature(AddItemsArgs, returns(AddOut)),
        "Add items",
        ADD_ITEMS,
        ToolAnnotations(readOnlyHint=False, destructiveHint=False, idempotentHint=True, openWorldHint=True),
    )
    add(
        delete_items,
        _signature(DeleteItemsArgs, returns(DeleteOut), collection=_DELETE_FROM),
        "Delete items",
        DELETE_ITEMS,
        ToolAnnotations(readOnlyHint=False, destructiveHint=True, idempotentHint=True),
    )
    add(
        list_collections,
        inspect.Signature([], return_annotation=returns(CollectionsOut)),
        "List collections",
        LIST_COLLECTIONS,
        ToolAnnotations(readOnlyHint=True, openWorldHint=False),
    )

    @server.resource(
        IMAGE_TEMPLATE,
        name="item_image",
        title="Item image",
        description="The full image of an item (ids percent-encoded); search results carry each hit's URI.",
    )
    async def item_image(collection: str, item_id: str) -> bytes:
        def read() -> bytes:
            ref = refs.find(deps, collection, unquote(item_id))
            return deps.settings.image_limits.read(ref)

        return await anyio.to_thread.run_sync(read)

    @server.resource(
        GALLERY_URI,
        name="gallery",
        title="Search results gallery",
        description="MCP App: renders search results (thumbnails, ranks, scores; click for the full image).",
        mime_type=APP_MIME,
        meta={"ui": {"prefersBorder": True}},
    )
    def gallery() -> str:
        return gallery_html()

    return server


def _hide_paths(work: Callable[..., CallToolResult]) -> Callable[..., CallToolResult]:
    """``work`` whose text and structured results pass :func:`retllm.redact.redact_data`."""

    @functools.wraps(work)
    def hidden(**kw: Any) -> CallToolResult:
        out = work(**kw)
        content = [
            c.model_copy(update={"text": redact(c.text)}) if isinstance(c, TextContent) else c for c in out.content
        ]
        structured = redact_data(out.structuredContent) if out.structuredContent is not None else None
        return out.model_copy(update={"content": content, "structuredContent": structured})

    return hidden


def _log_level() -> Literal["DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL"]:
    """The root logger's level (``retllm -v`` sets it) for the SDK and uvicorn: no access log by default."""
    level = logging.getLogger().getEffectiveLevel()
    levels = logging.getLevelNamesMapping()
    return next((n for n in ("DEBUG", "INFO", "WARNING", "ERROR") if levels[n] >= level), "CRITICAL")


def _result(text: str, out: BaseModel) -> CallToolResult:
    return CallToolResult(content=[TextContent(type="text", text=text)], structuredContent=out.model_dump(mode="json"))


async def serve_http(server: FastMCP, access: AccessSettings) -> None:
    """Serve ``server`` over streamable HTTP on its host and port (FastMCP's own runner, with :class:`HttpGuard`
    in front of the app)."""
    import uvicorn

    app = HttpGuard(server.streamable_http_app(), access)
    s = server.settings
    await uvicorn.Server(uvicorn.Config(app, host=s.host, port=s.port, log_level=s.log_level.lower())).serve()


def serve(settings: Settings, http: str | None = None, *, insecure: bool = False) -> None:
    """Serve over stdio (default) or streamable HTTP on ``http="HOST:PORT"``, until the client or a signal ends it.

    HTTP follows ``retllm serve``'s rules: ``RETLLM_API_TOKEN``, without it no non-loopback address unless
    ``insecure``, and paths in requests confined to ``RETLLM_FILE_ROOTS`` (unset: no server file at all; stdio,
    the host's own child process, reads any path). Models load on the first tool call, so ``initialize`` and
    ``tools/list`` answer at once."""
    address = parse_http(http) if http is not None else None
    access = from_env(AccessSettings) if address is not None else None
    if address is not None and access is not None:
        check_bind(address[0], "--http", token=access.token is not None, insecure=insecure)
        if access.token is None:
            log.warning("RETLLM_API_TOKEN is not set: the MCP server has no authentication")
        if settings.file_roots is None:  # a caller over the network neither reads nor probes server files
            settings = settings.model_copy(update={"file_roots": []})
    deps = Deps(settings)
    try:
        with _stop_on_sigterm():
            if address is None or access is None:
                with _stdout_for_protocol_only():
                    build_server(deps).run("stdio")
            else:
                host, port = address
                anyio.run(serve_http, build_server(deps, host=host, port=port, access=access), access)
    finally:
        deps.close()


@contextmanager
def _stop_on_sigterm() -> Iterator[None]:
    """SIGTERM (how hosts and process managers stop a server) ends it like Ctrl-C, so the models and the index
    are closed; under HTTP, uvicorn shuts down gracefully first, then hands the signal on to this handler."""
    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return

    def stop(signum: int, frame: object) -> None:
        raise SystemExit(0)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


class _TextToStderr(io.TextIOWrapper):
    """``sys.stdout`` while serving stdio: text written to it goes to stderr, while ``buffer`` (where the SDK's
    stdio transport writes JSON-RPC) is the protocol's own copy of the real stdout."""

    def __init__(self, protocol: BinaryIO) -> None:
        super().__init__(os.fdopen(os.dup(sys.stderr.fileno()), "wb"), encoding="utf-8", line_buffering=True)
        self._protocol = protocol

    @property
    def buffer(self) -> BinaryIO:  # type: ignore[override]
        return self._protocol


@contextmanager
def _stdout_for_protocol_only() -> Iterator[None]:
    """Keep stdout for the protocol: a library's print, or native code writing to fd 1, lands on stderr."""
    try:
        sys.stdout.flush()
        out_fd = sys.stdout.fileno()
    except (AttributeError, OSError, ValueError):  # not a real stdout (an embedding host): nothing to guard
        yield
        return
    protocol = os.fdopen(os.dup(out_fd), "wb")
    saved_fd = os.dup(out_fd)
    os.dup2(sys.stderr.fileno(), out_fd)
    saved, guard = sys.stdout, _TextToStderr(protocol)
    sys.stdout = guard
    try:
        yield
    finally:
        sys.stdout = saved
        guard.close()
        os.dup2(saved_fd, out_fd)
        os.close(saved_fd)
        protocol.close()


def gallery_html() -> str:
    """The MCP Apps gallery page (package data: ``retllm.tools/gallery.html``)."""
    from importlib import resources

    return resources.files("retllm.tools").joinpath("gallery.html").read_text("utf-8")
