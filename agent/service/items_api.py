"""Search, items, collections and item images: the REST routes over :mod:`retllm.tools.ops`.

Nothing is written for a refused request: collections are checked before any image is kept, and query images
are searched from memory (only items added keep their image, by content)."""

from __future__ import annotations

import logging
import tempfile
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from retllm.agent.service.bodies import json_field, openapi_body, parse, read_body, validate
from retllm.agent.service.models import DeleteRequest, PublicSearch, SearchRequest
from retllm.tools import ops
from retllm.tools.schemas import AddItemsArgs, AddOut, CoarseSearchArgs, CollectionsOut, DeleteItemsArgs, SearchArgs

from retllm.errors import BadItemError, RetllmError
from retllm.images import encode_thumbnail, image_mime, is_url
from retllm.ingest import MANIFEST_EXTENSIONS, Source, iter_sources
from retllm.payload import check_payload
from retllm.types import Item

if TYPE_CHECKING:
    from retllm.agent.service.app import Service

log = logging.getLogger(__name__)


def query_image(svc: Service, image: str | None, upload: bytes | None) -> bytes | None:
    """The query image's bytes, checked (decodes within the pixel limit), never kept: an upload, a data URL, an
    http(s) URL fetched through the guard, or a path under the roots."""
    s = svc.settings
    if upload is not None:
        data = upload
    elif image is None:
        return None
    elif image[:5].lower() == "data:":
        data = ops.data_url_bytes(image)
    else:  # a URL (guarded) or a path (confined): the request limits say which and how
        data = s.request_limits.read(image)
    if not is_url(image or "") and len(data) > ops.MAX_INLINE_BYTES:
        raise ops.ToolInputError(f"image: over {ops.MAX_INLINE_BYTES // 2**20} MiB")
    s.image_limits.check(data)
    return data


def _search(svc: Service, args: SearchRequest, upload: bytes | None, cancel: threading.Event | None = None) -> Any:
    deps = svc.deps
    name = ops.collection_name(deps, args.collection, non_empty=True)  # before reading any image
    image = query_image(svc, args.image, upload)
    fields = {
        **args.model_dump(exclude={"coarse_only"}),
        "collection": name,
        "image": "(query image)" if image is not None else None,
        "top": args.top or args.k,
    }
    if not args.coarse_only and not deps.coarse_only:
        return ops.search(deps, SearchArgs(**fields), image, cancel=cancel)
    if args.min_score is not None:
        raise ops.ToolInputError("min_score needs the MLLM's scores: leave out coarse_only or min_score")
    coarse = CoarseSearchArgs(**{k: v for k, v in fields.items() if k in CoarseSearchArgs.model_fields})
    out = ops.coarse_search(deps, coarse, image, cancel=cancel)
    out.hits = out.hits[: fields["top"]]
    return out


def _upload_sources(svc: Service, uploads: list[tuple[str, bytes]], payload: dict[str, Any]) -> list[Source]:
    out = []
    for i, (filename, data) in enumerate(uploads):
        origin = f"image[{i}] ({filename})"
        try:
            check_payload({**payload, "filename": filename})
            svc.settings.image_limits.check(data)
        except BadItemError as e:
            out.append(Source(origin, error=str(e)))
            continue
        ref = svc.deps.keep_image(data)
        out.append(Source(origin, Item(image=ref, payload={**payload, "filename": filename})))
    return out


def _manifest(filename: str, data: bytes) -> list[Source]:
    suffix = Path(filename).suffix.lower()
    if suffix not in MANIFEST_EXTENSIONS:
        raise ops.ToolInputError(f"manifest {filename!r}: expected a .jsonl or .csv file")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"manifest{suffix}"
        path.write_bytes(data)
        sources = list(iter_sources([path]))
    for s in sources:  # origins name the upload, not the server's temporary file
        s.origin = s.origin.replace(str(path), filename)
        image = s.item.image if s.item is not None else None
        if isinstance(image, str) and image.startswith(tmp + "/"):
            s.item, s.error = None, "an uploaded manifest cannot use relative image paths: give URLs or absolute paths"
    return sources


def router(svc: Service) -> APIRouter:
    r = APIRouter()

    @r.post(
        "/search",
        response_model=PublicSearch,
        tags=["search"],
        openapi_extra=openapi_body(SearchRequest, "The same fields as text, `filter` as JSON, and the file `image`."),
    )
    async def search(request: Request) -> dict[str, Any]:
        """Coarse top-k, then the MLLM scores each pair and re-ranks (``retllm search --json``'s fields)."""
        fields, files = await read_body(request, svc)
        json_field(fields, "filter")
        uploaded = files.get("image", [])
        if len(uploaded) > 1 or set(files) - {"image"}:
            raise HTTPException(422, "files: upload one query image, as the field image")
        if uploaded and fields.get("image"):
            raise HTTPException(422, "image: upload a file or give the image field, not both")
        upload = await uploaded[0].read() if uploaded else None
        if upload is not None and not upload:
            raise HTTPException(422, "image: the uploaded file is empty")
        if upload is None:
            args = validate(SearchRequest, fields)
        else:  # the file stands in for the image field in the "something to search" check
            args = validate(SearchRequest, {**fields, "image": "(upload)"}).model_copy(update={"image": None})
        cancel = threading.Event()  # set when the client leaves: the remaining pairs are not scored
        out = await svc.gate.run(_search, svc, args, upload, cancel, request=request, cancel=cancel)
        return svc.public(request, out)

    @r.post(
        "/items",
        response_model=AddOut,
        tags=["items"],
        openapi_extra=openapi_body(
            AddItemsArgs,
            "Files `image` (repeatable) with optional `payload` (JSON) and `collection`; or a file `manifest` "
            "(.jsonl/.csv whose `image` fields are URLs or absolute paths under RETLLM_FILE_ROOTS).",
        ),
    )
    async def add_items(request: Request) -> AddOut:
        """Add items (JSON, uploaded images, or a manifest); bad items are skipped and listed, the rest added."""
        fields, files = await read_body(request, svc)
        if not files:
            args = validate(AddItemsArgs, fields)
            return await svc.gate.run(ops.add_items, svc.deps, args, request=request)
        json_field(fields, "payload")
        payload = fields.get("payload") or {}
        if not isinstance(payload, dict) or any(k in payload for k in ("id", "text", "image")):
            raise HTTPException(422, "payload: a JSON object of extra fields (not id, text or image)")
        try:
            check_payload(payload)  # shared by every uploaded file: refused once, before anything is kept
        except BadItemError as e:
            raise HTTPException(422, str(e)) from e
        unknown = set(files) - {"image", "manifest"}
        if unknown:
            raise HTTPException(422, f"unknown file field(s) {sorted(unknown)}: use image (repeatable) or manifest")
        uploads = [(f.filename or "upload", await f.read()) for f in files.get("image", [])]
        manifests = [(f.filename or "manifest", await f.read()) for f in files.get("manifest", [])]

        def work() -> AddOut:
            name = ops.collection_name(svc.deps, fields.get("collection"), must_exist=False)  # before keeping
            sources = []
            for filename, data in manifests:
                sources += _manifest(filename, data)
            return ops.ingest(svc.deps, name, _upload_sources(svc, uploads, payload) + sources)

        return await svc.gate.run(work, request=request)

    @r.delete("/items", tags=["items"], openapi_extra=openapi_body(DeleteRequest))
    async def delete_items(request: Request) -> dict[str, Any]:
        """Delete items by id; ids not in the collection come back as ``missing``."""
        body = await parse(request, DeleteRequest)
        args = DeleteItemsArgs(ids=body.ids, collection=body.collection)
        return (await svc.gate.run(ops.delete_items, svc.deps, args, request=request)).model_dump()

    @r.delete("/items/{item_id:path}", tags=["items"])
    async def delete_item(item_id: str, request: Request, collection: str | None = None) -> dict[str, Any]:
        """Delete one item (404 if it is not there)."""
        args = DeleteItemsArgs(ids=[item_id], collection=collection)
        out = await svc.gate.run(ops.delete_items, svc.deps, args, request=request)
        if out.missing:
            raise HTTPException(404, f"no item {item_id!r} in collection {out.collection!r}")
        return out.model_dump()

    @r.get("/collections", response_model=CollectionsOut, tags=["collections"])
    async def collections(request: Request) -> CollectionsOut:
        """Every collection with its item count and vector size."""
        return await svc.gate.run(ops.list_collections, svc.deps, request=request)

    @r.get("/collections/{name}", tags=["collections"])
    async def collection(name: str, request: Request) -> dict[str, Any]:
        """One collection's stats (404 if it does not exist)."""
        out = await svc.gate.run(ops.list_collections, svc.deps, request=request)
        found = next((c for c in out.collections if c.name == name), None)
        if found is None:
            have = ", ".join(c.name for c in out.collections) or "none"
            raise HTTPException(404, f"no collection {name!r}; existing: {have}")
        return found.model_dump()

    return r


def image_router(svc: Service) -> APIRouter:
    r = APIRouter()
    size_q = Query(default=None, ge=16, le=2048, description="Longest side of a thumbnail (px).")

    async def serve(item_id: str, request: Request, collection: str | None, size: int | None) -> Response:
        name = collection or svc.settings.collection
        if not svc.auth.image_ok(request, name, item_id, size):
            raise HTTPException(401, "missing or wrong bearer token, or an expired image link: search again")
        data, mime = await svc.gate.run(_image, svc, name, item_id, size, request=request)
        headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        return Response(data, media_type=mime, headers=headers)

    @r.get("/items/image", tags=["items"], response_class=Response)
    async def item_image_by_query(
        id: str, request: Request, collection: str | None = None, size: int | None = size_q
    ) -> Response:
        """An item's image by ``id`` (the form result links take for ids holding ``/`` or made of dots)."""
        return await serve(id, request, collection, size)

    @r.get("/items/{item_id:path}/image", tags=["items"], response_class=Response)
    async def item_image(
        item_id: str, request: Request, collection: str | None = None, size: int | None = size_q
    ) -> Response:
        """An item's image (``size``: a thumbnail). Needs the token, or the signed link a search result gives."""
        return await serve(item_id, request, collection, size)

    return r


SAFE_TYPES = frozenset({"image/jpeg", "image/png", "image/gif", "image/webp"})  # served as stored


def _image(svc: Service, collection: str, item_id: str, size: int | None) -> tuple[bytes, str]:
    name = ops.collection_name(svc.deps, collection)
    payload = svc.deps.get_index().payloads(name, [item_id]).get(item_id)
    if payload is None:
        raise HTTPException(404, f"no item {item_id!r} in collection {name!r}")
    ref = payload.get("image")
    if not ref:
        raise HTTPException(404, f"item {item_id!r} has no image")
    try:
        data = svc.settings.image_limits.read(ref)
        if size is not None:
            return encode_thumbnail(svc.settings.image_limits.decode(data, fit_side=size), size)
        mime = image_mime(data)
        if mime in SAFE_TYPES:
            return data, mime
        im = svc.settings.image_limits.decode(data)  # TIFF, BMP...: re-encoded for browsers
        return encode_thumbnail(im, max(im.size))
    except (RetllmError, OSError) as e:
        log.warning("the image of %r in %r cannot be read: %s", item_id, name, e)
        raise HTTPException(502, f"the image of item {item_id!r} cannot be read now") from e
