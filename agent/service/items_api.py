"""Search, items, collections and item images: the REST routes over :mod:`retllm.tools.ops`."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fastapi import APIRouter, HTTPException, Query, Request
from fastapi.responses import Response
from pydantic import ValidationError
from retllm.agent.service.models import DeleteRequest, PublicSearch, SearchRequest
from retllm.tools import ops
from retllm.tools.schemas import AddItemsArgs, AddOut, CoarseSearchArgs, CollectionsOut, DeleteItemsArgs, SearchArgs

from retllm.errors import BadItemError, RetllmError
from retllm.images import decode_image
from retllm.ingest import MANIFEST_EXTENSIONS, Source, iter_sources
from retllm.types import Item

if TYPE_CHECKING:
    from retllm.agent.service.app import Service
    from starlette.datastructures import UploadFile

_MULTIPART = {"multipart/form-data": {"schema": {"type": "object"}}}


def _openapi(model: type, multipart: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": model.model_json_schema()},
                "multipart/form-data": {"schema": {"type": "object", "description": multipart}},
            },
        }
    }


async def read_body(request: Request, svc: Service) -> tuple[dict[str, Any], dict[str, list[UploadFile]]]:
    """A JSON object, or a multipart form's text fields and files (limits: RETLLM_MAX_UPLOAD_FILES, body size)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype == "multipart/form-data":
        form = await request.form(
            max_files=svc.conf.max_upload_files, max_fields=200, max_part_size=svc.conf.max_body_bytes
        )
        fields: dict[str, Any] = {}
        files: dict[str, list[UploadFile]] = {}
        for key, value in form.multi_items():
            if isinstance(value, str):
                fields[key] = value
            else:
                files.setdefault(key, []).append(value)
        return fields, files
    if ctype not in ("application/json", ""):
        raise HTTPException(415, f"send application/json or multipart/form-data, not {ctype}")
    try:
        body = json.loads(await request.body() or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"the body is not valid JSON: {e}") from e
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return body, {}


def _json_field(fields: dict[str, Any], name: str) -> None:
    """A multipart text field holding JSON (``filter``, ``payload``), parsed in place."""
    if isinstance(fields.get(name), str):
        try:
            fields[name] = json.loads(fields[name])
        except json.JSONDecodeError as e:
            raise HTTPException(422, f"{name}: not valid JSON ({e.msg})") from e


def _search(svc: Service, args: SearchRequest, upload: bytes | None) -> Any:
    deps = svc.deps
    fine = not args.coarse_only and not deps.coarse_only
    if upload is not None:
        image_ref = ops.keep_checked(deps, upload)
    else:
        image_ref = ops.query_image_ref(deps, args.image, fine=fine)
    fields = {**args.model_dump(exclude={"coarse_only"}), "image": image_ref}
    if fine:
        return ops.search(deps, SearchArgs(**fields), image_ref)
    if args.min_score is not None:
        raise ops.ToolInputError("min_score needs the MLLM's scores: leave out coarse_only or min_score")
    coarse = CoarseSearchArgs(**{k: v for k, v in fields.items() if k in CoarseSearchArgs.model_fields})
    out = ops.coarse_search(deps, coarse, image_ref)
    out.hits = out.hits[: args.top]
    return out


def _upload_sources(svc: Service, uploads: list[tuple[str, bytes]], payload: dict[str, Any]) -> list[Source]:
    out = []
    for i, (filename, data) in enumerate(uploads):
        origin = f"image[{i}] ({filename})"
        try:
            decode_image(data, max_pixels=svc.settings.max_image_pixels)
        except BadItemError as e:
            out.append(Source(origin, error=str(e)))
            continue
        ref = svc.deps.keep_image(data)
        out.append(Source(origin, Item(image=ref, payload={**payload, "filename": filename})))
    return out


def _manifest(svc: Service, filename: str, data: bytes) -> list[Source]:
    suffix = Path(filename).suffix.lower()
    if suffix not in MANIFEST_EXTENSIONS:
        raise ops.ToolInputError(f"manifest {filename!r}: expected a .jsonl or .csv file")
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"manifest{suffix}"
        path.write_bytes(data)
        sources = list(iter_sources([path]))
    for s in sources:  # origins name the upload, not the server's temporary file
        s.origin = s.origin.replace(str(path), filename)
    return sources


def router(svc: Service) -> APIRouter:
    r = APIRouter()

    @r.post(
        "/search",
        response_model=PublicSearch,
        tags=["search"],
        openapi_extra=_openapi(SearchRequest, "The same fields as text, `filter` as JSON, and the file `image`."),
    )
    async def search(request: Request) -> dict[str, Any]:
        """Coarse top-k, then the MLLM scores each pair and re-ranks (``retllm search --json``'s fields)."""
        fields, files = await read_body(request, svc)
        _json_field(fields, "filter")
        uploaded = files.get("image", [])
        if len(uploaded) > 1:
            raise HTTPException(422, "image: upload one query image")
        if uploaded and fields.get("image"):
            raise HTTPException(422, "image: upload a file or give the image field, not both")
        upload = await uploaded[0].read() if uploaded else None
        if upload is not None and not upload:
            raise HTTPException(422, "image: the uploaded file is empty")
        try:
            args = SearchRequest.model_validate({**fields, **({"image": "(upload)"} if upload else {})})
        except ValidationError as e:
            raise HTTPException(422, ops.validation_message(e)) from e
        out = await svc.gate.run(_search, svc, args, upload)
        return svc.public(request, out)

    @r.post(
        "/items",
        response_model=AddOut,
        tags=["items"],
        openapi_extra=_openapi(
            AddItemsArgs,
            "Files `image` (repeatable) with optional `payload` (JSON) and `collection`; or a file "
            "`manifest` (.jsonl/.csv whose `image` fields are URLs or paths under RETLLM_FILE_ROOTS).",
        ),
    )
    async def add_items(request: Request) -> AddOut:
        """Add items (JSON, uploaded images, or a manifest); bad items are skipped and listed, the rest added."""
        fields, files = await read_body(request, svc)
        if not files:
            try:
                args = AddItemsArgs.model_validate(fields)
            except ValidationError as e:
                raise HTTPException(422, ops.validation_message(e)) from e
            return await svc.gate.run(ops.add_items, svc.deps, args)
        _json_field(fields, "payload")
        payload = fields.get("payload") or {}
        if not isinstance(payload, dict) or any(k in payload for k in ("id", "text", "image")):
            raise HTTPException(422, "payload: a JSON object of extra fields (not id, text or image)")
        unknown = set(files) - {"image", "manifest"}
        if unknown:
            raise HTTPException(422, f"unknown file field(s) {sorted(unknown)}: use image (repeatable) or manifest")
        uploads = [(f.filename or "upload", await f.read()) for f in files.get("image", [])]
        manifests = [(f.filename or "manifest", await f.read()) for f in files.get("manifest", [])]

        def work() -> AddOut:
            sources = _upload_sources(svc, uploads, payload)
            for filename, data in manifests:
                sources += _manifest(svc, filename, data)
            return ops.ingest(svc.deps, fields.get("collection"), sources)

        return await svc.gate.run(work)

    @r.delete("/items", tags=["items"])
    async def delete_items(body: DeleteRequest) -> dict[str, Any]:
        """Delete items by id; ids not in the collection come back as ``missing``."""
        args = DeleteItemsArgs(ids=body.ids, collection=body.collection)
        return (await svc.gate.run(ops.delete_items, svc.deps, args)).model_dump()

    @r.delete("/items/{item_id}", tags=["items"])
    async def delete_item(item_id: str, collection: str | None = None) -> dict[str, Any]:
        """Delete one item (404 if it is not there)."""
        out = await svc.gate.run(ops.delete_items, svc.deps, DeleteItemsArgs(ids=[item_id], collection=collection))
        if out.missing:
            raise HTTPException(404, f"no item {item_id!r} in collection {out.collection!r}")
        return out.model_dump()

    @r.get("/collections", response_model=CollectionsOut, tags=["collections"])
    async def collections() -> CollectionsOut:
        """Every collection with its item count and vector size."""
        return await svc.gate.run(ops.list_collections, svc.deps)

    @r.get("/collections/{name}", tags=["collections"])
    async def collection(name: str) -> dict[str, Any]:
        """One collection's stats (404 if it does not exist)."""
        out = await svc.gate.run(ops.list_collections, svc.deps)
        found = next((c for c in out.collections if c.name == name), None)
        if found is None:
            have = ", ".join(c.name for c in out.collections) or "none"
            raise HTTPException(404, f"no collection {name!r}; existing: {have}")
        return found.model_dump()

    return r


def image_router(svc: Service) -> APIRouter:
    r = APIRouter()

    @r.get("/items/{item_id}/image", tags=["items"], response_class=Response)
    async def item_image(
        item_id: str,
        request: Request,
        collection: str | None = None,
        size: int | None = Query(default=None, ge=16, le=2048, description="Longest side of a thumbnail (px)."),
    ) -> Response:
        """An item's image (``size``: a thumbnail). Needs the token, or the signed link a search result gives."""
        name = collection or svc.settings.collection
        if not svc.auth.image_ok(request, name, item_id, size):
            raise HTTPException(401, "missing or wrong bearer token, or an expired image link: search again")
        data, mime = await svc.gate.run(_image, svc, name, item_id, size)
        headers = {"Cache-Control": "private, max-age=3600", "X-Content-Type-Options": "nosniff"}
        return Response(data, media_type=mime, headers=headers)

    return r


SAFE_FORMATS = {"JPEG": "image/jpeg", "PNG": "image/png", "GIF": "image/gif", "WEBP": "image/webp"}


def _image(svc: Service, collection: str, item_id: str, size: int | None) -> tuple[bytes, str]:
    import io

    from PIL import Image
    from retllm.agent.service.app import thumbnail_bytes

    name = ops.collection_name(svc.deps, collection)
    payload = svc.deps.get_index().payloads(name, [item_id]).get(item_id)
    if payload is None:
        raise HTTPException(404, f"no item {item_id!r} in collection {name!r}")
    ref = payload.get("image")
    if not ref:
        raise HTTPException(404, f"item {item_id!r} has no image")
    try:
        data = svc.settings.image_limits.read(ref)
    except RetllmError as e:
        raise HTTPException(502, f"the image of {item_id!r} cannot be read: {e}") from e
    if size is not None:
        return thumbnail_bytes(data, size, svc.settings.max_image_pixels)
    fmt = Image.open(io.BytesIO(data)).format or ""
    if fmt in SAFE_FORMATS:
        return data, SAFE_FORMATS[fmt]
    return thumbnail_bytes(data, 1 << 14, svc.settings.max_image_pixels)  # TIFF, BMP...: re-encoded for browsers
