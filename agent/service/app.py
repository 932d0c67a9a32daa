"""The FastAPI application: one :class:`Service` (models, index, checkpointer, guards) shared by every request.

Models load once per process (in the background at start-up: ``/readyz`` says when they are in) and every
piece of model work runs on the :class:`~retllm.agent.service.security.Gate`'s threads, never on the event loop;
concurrent searches meet in the local scorer's cross-query batches.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from importlib import resources
from typing import Any
from urllib.parse import quote, urlencode

import anyio
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from pydantic import ValidationError
from retllm.agent.service.config import ServeSettings
from retllm.agent.service.outgoing import HidePaths
from retllm.agent.service.security import Auth, BodyLimit, ClientGone, Gate, WebGuard, origin_of
from retllm.tools import ops
from retllm.tools.deps import Deps
from retllm.tools.schemas import SearchOut

from retllm.errors import CollectionBrokenError, CollectionNotFoundError, RetllmError
from retllm.redact import protect, redact
from retllm.settings import Settings

log = logging.getLogger(__name__)


@dataclass
class Service:
    """What every route works with; built once by :func:`create_app`."""

    deps: Deps
    conf: ServeSettings
    chat_model: Any = None  # a LangChain chat model (tests inject one); default: RETLLM_CHAT_MODEL, on first chat
    owns_deps: bool = True
    auth: Auth = field(init=False)
    gate: Gate = field(init=False)
    saver: Any = None
    load_error: str | None = None
    busy_threads: set[str] = field(default_factory=set)  # conversations answering a turn (event loop only)
    loaded: threading.Event = field(default_factory=threading.Event)
    _graphs: dict[str, Any] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.auth = Auth(self.conf.token, self.conf.image_url_ttl)
        self.gate = Gate(self.conf.serve_workers, self.conf.max_queue, self.conf.retry_after)

    @property
    def settings(self) -> Settings:
        return self.deps.settings

    def preload(self) -> None:
        """Load the embedder and the scorer and open the index (a background thread at start-up)."""
        try:
            self.deps.get_index().list_collections()
            self.deps.get_embedder()
            self.deps.get_scorer()
        except Exception as e:  # reported by /readyz and by the requests that need the models
            log.error("loading models failed: %s", e)
            self.load_error = f"{type(e).__name__}: {e}"
        finally:
            self.loaded.set()

    def chat_graph(self, *, stateless: bool = False) -> Any:
        """The chat graph (one per process): with the SQLite checkpointer, or without one for one-off requests."""
        from retllm.agent.chat import build_chat_graph, make_chat_model

        key = "stateless" if stateless else "threads"
        with self._lock:
            if key not in self._graphs:
                if self.chat_model is None:
                    self.chat_model = make_chat_model(self.settings)
                saver = None if stateless else self.saver
                self._graphs[key] = build_chat_graph(self.deps, model=self.chat_model, checkpointer=saver)
            return self._graphs[key]

    def base_url(self, request: Request) -> str:
        """Where links to this service point: ``RETLLM_PUBLIC_URL``, else the address the connection came in on
        (never the request's ``Host``, which the caller writes)."""
        if self.conf.public_url:
            return self.conf.public_url.rstrip("/")
        scheme, server = request.scope.get("scheme", "http"), request.scope.get("server")
        root = request.scope.get("root_path", "").rstrip("/")
        if not server or server[1] is None:  # a Unix socket: only RETLLM_PUBLIC_URL can say
            return f"{scheme}://localhost{root}"
        host, port = server
        return f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}{root}"

    def image_url(self, request: Request, collection: str, item_id: str, size: int | None = None) -> str:
        params: dict[str, str] = {"collection": collection}
        if size is not None:
            params["size"] = str(size)
        params.update(self.auth.sign(collection, item_id, size))
        if "/" in item_id or item_id.strip(".") == "":  # a path segment would not carry it intact
            return f"{self.base_url(request)}/items/image?{urlencode({'id': item_id, **params})}"
        return f"{self.base_url(request)}/items/{quote(item_id, safe='')}/image?{urlencode(params)}"

    def public(self, request: Request, out: SearchOut) -> dict[str, Any]:
        """A search result as clients get it: images as URLs served by this service, never server paths."""
        from retllm.agent.service.models import PublicHit, PublicSearch

        hits = []
        for h in out.hits:
            data = h.model_dump()
            if h.image:
                data["image"] = self.image_url(request, out.collection, h.id)
                data["thumbnail"] = self.image_url(request, out.collection, h.id, self.settings.thumbnail_size)
            hits.append(PublicHit(**data))
        res = PublicSearch(
            collection=out.collection, query=out.query, scorer=out.scorer, k=out.k, min_score=out.min_score, hits=hits
        )
        return res.model_dump(mode="json")

    def close(self) -> None:
        if self.saver is not None:
            self.saver.conn.close()
        if self.owns_deps:
            self.deps.close()


def upstream(e: Exception) -> bool:
    """Whether ``e`` comes from a model server behind us (the chat model's provider, its HTTP client)."""
    return type(e).__module__.split(".")[0] in ("openai", "httpx", "httpcore", "langchain_openai", "anthropic")


def error_response(e: Exception) -> JSONResponse:
    """The HTTP answer to an error from the library or the tools (4xx: the caller can fix it); server paths in
    the message are cut on the way out (:class:`~retllm.agent.service.outgoing.HidePaths`)."""
    if isinstance(e, CollectionNotFoundError):
        return JSONResponse({"detail": str(e)}, status_code=404)
    if isinstance(e, CollectionBrokenError):  # the store's state, not the request: recovered by an operator
        return JSONResponse({"detail": str(e)}, status_code=409)
    if isinstance(e, ValidationError):
        return JSONResponse({"detail": ops.validation_message(e)}, status_code=422)
    if isinstance(e, ops.RECOVERABLE):
        return JSONResponse({"detail": str(e)}, status_code=400)
    if isinstance(e, RetllmError):  # the models or the endpoint behind us: a wrong key, every pair failing
        return JSONResponse({"detail": str(e)}, status_code=502)
    if upstream(e):
        log.warning("a model server failed: %s: %s", type(e).__name__, e)
        return JSONResponse({"detail": f"the chat model's server failed: {type(e).__name__}"}, status_code=502)
    log.exception("unexpected error", exc_info=e)
    return JSONResponse({"detail": f"internal error ({type(e).__name__})"}, status_code=500)


def page_html() -> str:
    return resources.files("retllm.agent.service").joinpath("static/index.html").read_text("utf-8")


def create_app(
    settings: Settings | None = None,
    conf: ServeSettings | None = None,
    *,
    deps: Deps | None = None,
    chat_model: Any = None,
    preload: bool = True,
) -> FastAPI:
    """The service. ``deps``: built models to share (tests inject tiny ones); default: built from ``settings``.

    Paths in requests are confined to ``RETLLM_FILE_ROOTS`` (unset: no server file at all, only uploads)."""
    from retllm.agent.chat import chat_db, open_checkpointer

    owns = deps is None
    deps = deps if deps is not None else Deps(settings or Settings())
    if deps.settings.file_roots is None:  # a remote caller reads no server file unless roots are configured
        deps.settings = deps.settings.model_copy(update={"file_roots": []})
    s = deps.settings
    protect(s.data_dir, s.blob_dir, *(s.file_roots or []), os.getcwd())
    svc = Service(deps, conf or ServeSettings(), chat_model=chat_model, owns_deps=owns)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        svc.saver = open_checkpointer(chat_db(svc.settings))
        if preload:
            threading.Thread(target=svc.preload, name="retllm-preload", daemon=True).start()
        else:
            svc.loaded.set()
        try:
            yield
        finally:
            svc.close()

    app = FastAPI(
        title="retllm",
        description="Training-free multimodal retrieval: coarse search in Qdrant, then an MLLM re-ranks.",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.service = svc
    probes = threading.BoundedSemaphore(2)  # threads checking the index for /readyz, stalled ones included
    app.add_middleware(BodyLimit, limit=svc.conf.max_body_bytes)
    app.add_middleware(WebGuard, names=svc.conf.host_names, public_url=svc.conf.public_url)  # outermost: first
    app.add_middleware(HidePaths)  # every JSON answer and server-sent event leaves through it

    @app.exception_handler(RetllmError)
    async def _retllm_error(request: Request, e: RetllmError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(ValidationError)
    async def _validation_error(request: Request, e: ValidationError) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(ClientGone)
    async def _gone(request: Request, e: ClientGone) -> Response:
        return Response(status_code=499)  # nobody reads it: the client hung up while its request waited

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> JSONResponse:
        return error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _request_error(request: Request, e: RequestValidationError) -> JSONResponse:
        lines = [f"{'.'.join(str(x) for x in err['loc'])}: {err['msg']}" for err in e.errors()]
        return JSONResponse({"detail": "invalid request:\n" + "\n".join(lines)}, status_code=422)

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def page(request: Request) -> HTMLResponse:
        headers = {"Content-Security-Policy": csp(origin_of(svc.base_url(request))), "X-Frame-Options": "DENY"}
        return HTMLResponse(page_html(), headers=headers)

    @app.get("/healthz", tags=["health"])
    async def healthz() -> dict[str, str]:
        """The process answers (liveness)."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["health"])
    async def readyz(request: Request) -> JSONResponse:
        """The index is reachable and the models are loaded (readiness); 503 until then, or with the reason.
        Broken collections are named to callers with the token; others (probes) get their number."""
        models = {"embedder": deps.embedder is not None, "scorer": deps.coarse_only or deps.scorer is not None}
        body: dict[str, Any] = {"models": models, "index": False}
        if svc.loaded.is_set() and svc.load_error is None:
            if not probes.acquire(blocking=False):  # the earlier checks still wait on the index
                body["error"] = "index unreachable: earlier checks are still waiting for it"
            else:

                def check() -> dict[str, str]:
                    try:
                        index = deps.get_index()
                        return {n: why for n in index.list_collections() if (why := index.broken(n))}
                    finally:
                        probes.release()  # when the thread ends, even if nobody waits for it any more

                try:  # not through the gate (a busy service is still ready); a stalled index is not ready
                    with anyio.fail_after(5):
                        broken = await anyio.to_thread.run_sync(check, abandon_on_cancel=True)
                    body["index"] = True
                    if broken:  # the others still serve: ready, and says which ones do not
                        body["broken"] = broken if svc.auth.bearer_ok(request) else len(broken)
                except TimeoutError:
                    body["error"] = "index unreachable: no answer within 5 s"
                except Exception as e:
                    body["error"] = f"index unreachable: {type(e).__name__}: {redact(str(e))}"
        ready = body["index"] and all(models.values()) and svc.load_error is None
        body["status"] = "ready" if ready else ("error" if svc.load_error or "error" in body else "loading")
        if ready and "broken" in body:
            body["status"] = "degraded"
        if svc.load_error:
            body["error"] = redact(svc.load_error)
        return JSONResponse(body, status_code=200 if ready else 503)

    from retllm.agent.service import chat_api, items_api

    guard = [Depends(svc.auth.require)]
    app.include_router(items_api.router(svc), dependencies=guard)
    app.include_router(items_api.image_router(svc))  # its own check: the token or a signed link
    app.include_router(chat_api.router(svc), dependencies=guard)
    app.include_router(chat_api.openai_router(svc), dependencies=guard)
    return app


def csp(links: str) -> str:
    """The page's Content-Security-Policy: nothing from a third party; images also from ``links``, the origin
    result links point to (the page may be open under another name of this service, e.g. localhost)."""
    return (
        f"default-src 'self'; img-src 'self' {links} data: blob:; style-src 'self' 'unsafe-inline'; "
        "script-src 'self' 'unsafe-inline'; connect-src 'self'; frame-ancestors 'none'"
    )
