"""HTTP endpoints of a worker, on Faust's web server.

GET /health, GET /ready (true once table recovery completed), GET /stats, GET /metrics (Prometheus),
GET /openapi.yaml,
GET /users/{user_id}, GET /users/{user_id}/recommendations?k=&categories=&keywords=,
POST /users/{user_id}/rerank with {"image_ids": [...], "alpha": 0.5}.
Invalid requests get a 400 whose message names the parameter.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from faust.web import Request, Response, View

from stylestream.schemas.validation import InvalidEvent, Limits, validate_id
from stylestream.streams.metrics import CONTENT_TYPE as METRICS_CONTENT_TYPE
from stylestream.streams.metrics import render as render_metrics
from stylestream.streams.query import QueryError, recommend, rerank

if TYPE_CHECKING:
    from stylestream.streams.app import StyleStreamApp

log = logging.getLogger(__name__)

OPENAPI_PATH = Path(__file__).with_name("openapi.yaml")


def _split(values: str | None) -> list[str]:
    return [value for value in (values or "").split(",") if value]


def _error(view: View, status: int, parameter: str | None, message: str) -> Response:
    return view.json({"error": message, "parameter": parameter}, status=status)


RERANK_FIELDS = {"image_ids", "alpha"}


def _invalid_user_id(user_id: str, limits: Limits) -> str | None:
    """Return why a user id from a URL is invalid, by the same rules as event ids, or None."""
    try:
        validate_id(user_id, "user_id", limits)
    except InvalidEvent as exc:
        return str(exc)
    return None


def register_views(worker: "StyleStreamApp") -> None:
    """Add the stylestream endpoints to the worker's Faust web server."""
    app = worker.app
    limits = worker.limits

    @app.page("/health")
    async def health(view: View, request: Request) -> Response:
        # A stalled partition fails the liveness check, so an orchestrator restarts the worker.
        stalled = worker.stats.stalled_partitions
        if stalled:
            return view.json({"status": "stalled", "stalled_partitions": stalled}, status=503)
        return view.json({"status": "ok"})

    @app.page("/ready")
    async def ready(view: View, request: Request) -> Response:
        recovered = app.tables.recovery.completed.is_set()
        return view.json({"ready": recovered}, status=200 if recovered else 503)

    @app.page("/stats")
    async def stats(view: View, request: Request) -> Response:
        worker.stats.table_size = len(worker.table)
        body = worker.stats.to_dict()
        body["pending_users"] = worker.sink.pending
        body["cached_images"] = len(worker.cache)
        body["model_version"] = worker.encoder.model_version
        return view.json(body)

    @app.page("/metrics")
    async def metrics(view: View, request: Request) -> Response:
        worker.stats.table_size = len(worker.table)
        body = render_metrics(worker.stats, worker.sink.pending)
        return view.text(body, content_type=METRICS_CONTENT_TYPE)

    @app.page("/openapi.yaml")
    async def openapi(view: View, request: Request) -> Response:
        return view.text(OPENAPI_PATH.read_text(), content_type="application/yaml")

    @app.page("/users/{user_id}")
    async def user(view: View, request: Request, user_id: str) -> Response:
        problem = _invalid_user_id(user_id, limits)
        if problem:
            return _error(view, 400, "user_id", problem)
        point = await worker.store.call("get_user", user_id)
        if point is None:
            return _error(view, 404, "user_id", f"user {user_id!r} has no style vector yet")
        payload = dict(point.payload)
        payload["freshness_seconds"] = time.time() - float(payload.get("updated_at", 0.0))
        payload["vector_dim"] = len(point.vector)
        return view.json(payload)

    @app.page("/users/{user_id}/recommendations")
    async def recommendations(view: View, request: Request, user_id: str) -> Response:
        problem = _invalid_user_id(user_id, limits)
        if problem:
            return _error(view, 400, "user_id", problem)
        raw_k = request.query.get("k", "10")
        try:
            k = int(raw_k)
        except ValueError:
            return _error(view, 400, "k", f"k must be an integer, got {raw_k!r}")
        try:
            result = await worker.store.run(
                recommend, worker.store.store, user_id, k,
                _split(request.query.get("categories")), _split(request.query.get("keywords")),
            )
        except QueryError as exc:
            return _error(view, 400, exc.parameter, str(exc))
        return view.json(result.to_dict())

    @app.page("/users/{user_id}/rerank")
    class Rerank(View):
        async def post(self, request: Request, user_id: str) -> Response:
            problem = _invalid_user_id(user_id, limits)
            if problem:
                return _error(self, 400, "user_id", problem)
            try:
                body: Any = await request.json()
            except ValueError as exc:
                return _error(self, 400, "body", f"request body is not valid JSON: {exc}")
            if not isinstance(body, dict) or not isinstance(body.get("image_ids"), list):
                return _error(self, 400, "image_ids", "request body must be an object with a list 'image_ids'")
            unknown = sorted(set(body) - RERANK_FIELDS)
            if unknown:
                return _error(self, 400, unknown[0], f"unknown field {unknown[0]!r}; allowed: {', '.join(sorted(RERANK_FIELDS))}")
            image_ids = body["image_ids"]
            if not image_ids:
                return _error(self, 400, "image_ids", "image_ids must not be empty")
            if not all(isinstance(image_id, str) and image_id for image_id in image_ids):
                return _error(self, 400, "image_ids", "image_ids must be non-empty strings")
            alpha = body.get("alpha", 0.5)
            if isinstance(alpha, bool) or not isinstance(alpha, (int, float)):
                return _error(self, 400, "alpha", f"alpha must be a number, got {alpha!r}")
            try:
                result = await worker.store.run(rerank, worker.store.store, user_id, image_ids, float(alpha))
            except QueryError as exc:
                return _error(self, 400, exc.parameter, str(exc))
            return self.json(result)
