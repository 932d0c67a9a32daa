"""Reading request bodies: JSON or multipart, big JSON parsed off the event loop, errors worded for the caller."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING, Any, TypeVar

import anyio
from fastapi import HTTPException, Request
from pydantic import BaseModel, ValidationError
from retllm.tools import ops

from retllm.redact import protect, redact  # noqa: F401 - their old home: the rule lives in retllm.redact

if TYPE_CHECKING:
    from retllm.agent.service.app import Service
    from starlette.datastructures import UploadFile

M = TypeVar("M", bound=BaseModel)
BIG = 256 * 1024  # bodies past this are parsed on a worker thread, not the event loop


def loads(raw: bytes | str, what: str = "the body") -> Any:
    """JSON from a request, or 400 in one line: malformed, nested past the parser's depth (RecursionError),
    or a number past Python's digit limit (a ValueError that is no JSONDecodeError)."""
    try:
        return json.loads(raw or b"null")
    except RecursionError as e:
        raise HTTPException(400, f"{what} is not valid JSON: nested too deeply") from e
    except json.JSONDecodeError as e:
        raise HTTPException(400, f"{what} is not valid JSON: {e}") from e
    except ValueError as e:  # UnicodeDecodeError, or int() past sys.get_int_max_str_digits()
        why = f"bad UTF-8 at byte {e.start}" if isinstance(e, UnicodeDecodeError) else "a number has too many digits"
        raise HTTPException(400, f"{what} is not valid JSON: {why}") from e


def content_type(request: Request) -> str:
    return request.headers.get("content-type", "").split(";")[0].strip().lower()


async def _json(request: Request) -> tuple[dict[str, Any], int]:
    ctype = content_type(request)
    if ctype != "application/json":  # no type, or a type a web page may send cross-site without asking
        raise HTTPException(415, f"send Content-Type: application/json, not {ctype or 'none'}")
    raw = await request.body()
    body = await anyio.to_thread.run_sync(loads, raw) if len(raw) > BIG else loads(raw)
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
    ctype = content_type(request)
    if ctype != "multipart/form-data":
        if ctype != "application/json":
            raise HTTPException(
                415, f"send Content-Type: application/json or multipart/form-data, not {ctype or 'none'}"
            )
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
        fields[name] = loads(fields[name], name)


def openapi_body(model: type[BaseModel], multipart: str | None = None) -> dict[str, Any]:
    """``openapi_extra`` documenting a body the route reads itself (JSON, and multipart when given)."""
    content: dict[str, Any] = {"application/json": {"schema": model.model_json_schema()}}
    if multipart is not None:
        content["multipart/form-data"] = {"schema": {"type": "object", "description": multipart}}
    return {"requestBody": {"required": True, "content": content}}
