"""Reading request bodies: JSON or multipart, big JSON parsed off the event loop, errors worded for the caller."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from retllm.tools import ops

if TYPE_CHECKING:
    from retllm.agent.service.app import Service
    from starlette.datastructures import UploadFile

M = TypeVar("M", bound=BaseModel)
BIG = 256 * 1024  # bodies past this are parsed on a worker thread, not the event loop


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw or b"null")
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HTTPException(400, f"the body is not valid JSON: {e}") from e


async def _json(request: Request) -> tuple[dict[str, Any], int]:
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype not in ("application/json", ""):
        raise HTTPException(415, f"send application/json, not {ctype}")
    raw = await request.body()
    body = await anyio.to_thread.run_sync(_loads, raw) if len(raw) > BIG else _loads(raw)
    if not isinstance(body, dict):
        raise HTTPException(422, "the body must be a JSON object")
    return body, len(raw)


def validate(model: type[M], data: dict[str, Any]) -> M:
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise HTTPException(422, ops.validation_message(e)) from e


async def parse(request: Request, model: type[M]) -> M:
    """The JSON body as ``model`` (422 listing every problem)."""
    data, size = await _json(request)
    return await anyio.to_thread.run_sync(validate, model, data) if size > BIG else validate(model, data)


async def read_body(request: Request, svc: Service) -> tuple[dict[str, Any], dict[str, list[UploadFile]]]:
    """A JSON object, or a multipart form's text fields and files (limits: RETLLM_MAX_UPLOAD_FILES, body size)."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if ctype != "multipart/form-data":
        if ctype not in ("application/json", ""):
            raise HTTPException(415, f"send application/json or multipart/form-data, not {ctype}")
        return (await _json(request))[0], {}
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


def json_field(fields: dict[str, Any], name: str) -> None:
    """A multipart text field holding JSON (``filter``, ``payload``), parsed in place."""
    if isinstance(fields.get(name), str):
        try:
            fields[name] = json.loads(fields[name])
        except json.JSONDecodeError as e:
            raise HTTPException(422, f"{name}: not valid JSON ({e.msg})") from e


def openapi_body(model: type[BaseModel], multipart: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` documenting a body the route reads itself (JSON, and multipart when given)."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": {"type": "object", "description": multipart}}
    return {"requestBody": {"required": True, "content": content}}


_PATH = re.compile(r"(?<![\w.:/…])(?:/[^/\s'\"(),\[\]]+)+/([^/\s'\"(),\[\]]+)")
_ROOTS: set[str] = set()


def protect(*folders: object) -> None:
    """Folders whose names never reach a caller, however they are written (relative, with spaces): the data
    dir, the file roots, the working directory. Process-wide: every app in the process adds its own."""
    for f in folders:
        for form in {str(f), str(Path(str(f)).resolve())}:
            if form not in ("", ".", "/"):
                _ROOTS.add(form.rstrip("/"))


def redact(text: str) -> str:
    """``text`` with server file paths cut to their file name (error messages reach remote callers)."""
    for root in sorted(_ROOTS, key=len, reverse=True):  # a whole folder name only: /app, not /apple.png
        text = re.sub(re.escape(root) + r"(?=/|$|[\s'\"),\]:])", "…", text)
    return _PATH.sub(r"…/\1", text)
