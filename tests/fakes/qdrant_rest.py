"""A real local HTTP server speaking the few routes of Qdrant's REST API that creating a collection takes.

qdrant-client talks REST to ``http://`` URLs; this answers what it asks on the ``ensure_collection`` and
``migrate`` paths, nothing more: ``GET /`` (the version check), ``GET /cluster``,
``GET /collections/{name}/exists``, ``PUT /collections/{name}`` (the body is recorded),
``GET /collections/{name}``, and for points ``PUT .../points`` (upsert), ``POST .../points`` (retrieve by
id) and ``POST .../points/count`` (unfiltered). Points live in a dict, unsharded: the fake only records
what the client asked for. Bodies follow the shapes of Qdrant's OpenAPI schema (the client parses them with
its own models). Any other route gets Qdrant's 404 and is logged in ``unknown``.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler
from typing import Any

from tests.fakes.local_http import running_server

VERSION = "1.19.0"


@dataclass
class FakeQdrant:
    peers: int = 1  # > 1: cluster mode on with this many peers
    cluster: bool = False  # cluster mode on (implied by peers > 1)
    cluster_status: int = 200  # e.g. 403 (a key without cluster rights) or 404 (a proxy that hides /cluster)
    api_key: str | None = None  # when set, requests without it get 401 (as Qdrant's service.api_key does)
    requests: list[tuple[str, str]] = field(default_factory=list)  # (method, path) in order
    created: dict[str, dict[str, Any]] = field(default_factory=dict)  # collection -> PUT body
    points: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # collection -> id -> point
    unknown: list[tuple[str, str]] = field(default_factory=list)
    url: str = ""

    def cluster_body(self) -> dict[str, Any]:
        if not (self.cluster or self.peers > 1):
            return {"status": "disabled"}
        return {
            "status": "enabled",
            "peer_id": 1,
            "peers": {str(i): {"uri": f"http://qdrant-{i}:6335/"} for i in range(1, self.peers + 1)},
            "raft_info": {
                "term": 2,
                "commit": 10,
                "pending_operations": 0,
                "leader": 1,
                "role": "Leader",
                "is_voter": True,
            },
            "consensus_thread_status": {"consensus_thread_status": "working", "last_update": "2026-01-01T00:00:00Z"},
            "message_send_failures": {},
        }

    def collection_info(self, name: str) -> dict[str, Any]:
        body = self.created[name]
        params = {
            k: v for k, v in body.items() if k in ("shard_number", "replication_factor", "write_consistency_factor")
        }
        params.setdefault("shard_number", 1)
        params.setdefault("replication_factor", 1)
        params.setdefault("write_consistency_factor", 1)
        return {
            "status": "green",
            "optimizer_status": "ok",
            "segments_count": 0,
            "points_count": 0,
            "indexed_vectors_count": 0,
            "config": {
                "params": {"vectors": body.get("vectors", {}), "on_disk_payload": True, **params},
                "hnsw_config": {"m": 16, "ef_construct": 100, "full_scan_threshold": 10000},
                "optimizer_config": {"default_segment_number": 0, "flush_interval_sec": 5},
                "wal_config": {"wal_capacity_mb": 32, "wal_segments_ahead": 0},
            },
            "payload_schema": {},
        }


def _handler(fake: FakeQdrant) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: Any) -> None:
            pass

        def _send(self, status: int, result: Any, error: str | None = None) -> None:
            body: dict[str, Any] = {"time": 0.0001}
            if error is None:
                body |= {"status": "ok", "result": result}
            else:
                body["status"] = {"error": error}
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _route(self, method: str) -> None:
            path = self.path.split("?", 1)[0]
            fake.requests.append((method, path))
            length = int(self.headers.get("Content-Length") or 0)
            payload: Any = json.loads(self.rfile.read(length) or b"null") if length else None
            if fake.api_key is not None and path != "/" and self.headers.get("api-key") != fake.api_key:
                self._send(401, None, "Must provide an API key or an Authorization bearer token")
                return
            coll = re.fullmatch(r"/collections/([^/]+)(/exists)?", path)
            pts = re.fullmatch(r"/collections/([^/]+)/points(/count)?", path)
            if pts and pts.group(1) not in fake.created:
                self._send(404, None, f"Not found: Collection `{pts.group(1)}` doesn't exist!")
                return
            stored = fake.points.setdefault(pts.group(1), {}) if pts else {}
            if method == "GET" and path == "/":
                self._raw({"title": "qdrant - vector search engine", "version": VERSION})
            elif method == "GET" and path == "/cluster":
                if fake.cluster_status != 200:
                    self._send(fake.cluster_status, None, "Forbidden" if fake.cluster_status == 403 else "Not found")
                else:
                    self._send(200, fake.cluster_body())
            elif coll and method == "GET" and coll.group(2):
                self._send(200, {"exists": coll.group(1) in fake.created})
            elif coll and method == "PUT" and not coll.group(2):
                if coll.group(1) in fake.created:
                    self._send(409, None, f"Wrong input: Collection `{coll.group(1)}` already exists!")
                else:
                    fake.created[coll.group(1)] = payload or {}
                    self._send(200, True)
            elif coll and method == "GET" and coll.group(1) in fake.created:
                self._send(200, fake.collection_info(coll.group(1)))
            elif coll and method == "GET":
                self._send(404, None, f"Not found: Collection `{coll.group(1)}` doesn't exist!")
            elif pts and method == "PUT" and not pts.group(2):
                stored.update({str(p["id"]): p for p in payload["points"]})
                self._send(200, {"operation_id": len(fake.requests), "status": "completed"})
            elif pts and method == "POST" and not pts.group(2):
                found = [stored[str(i)] for i in payload["ids"] if str(i) in stored]
                self._send(200, [{"id": p["id"], "payload": p.get("payload")} for p in found])
            elif pts and method == "POST" and not payload.get("filter"):
                self._send(200, {"count": len(stored)})
            else:
                fake.unknown.append((method, path))
                self._send(404, None, f"Not found: {path}")

        def _raw(self, body: dict[str, Any]) -> None:
            data = json.dumps(body).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802
            self._route("GET")

        def do_PUT(self) -> None:  # noqa: N802
            self._route("PUT")

        def do_POST(self) -> None:  # noqa: N802
            self._route("POST")

        def do_DELETE(self) -> None:  # noqa: N802
            self._route("DELETE")

    return Handler


@contextmanager
def fake_qdrant(**kwargs: Any) -> Iterator[FakeQdrant]:
    """Serve a :class:`FakeQdrant` on a free local port; ``url`` is its base URL."""
    fake = FakeQdrant(**kwargs)
    with running_server(_handler(fake), join=True) as server:
        fake.url = f"http://127.0.0.1:{server.server_address[1]}"
        yield fake
