"""A small HTTP client for a running worker's endpoints (loopback only)."""

from __future__ import annotations

import json
import urllib.error
import urllib.parse
import urllib.request
from typing import Any

from stylestream.schemas.errors import StylestreamError


class WorkerRequestError(StylestreamError):
    """The worker returned an error status or could not be reached."""

    def __init__(self, message: str, status: int | None = None) -> None:
        super().__init__(message)
        self.status = status


class WorkerClient:
    """Call a worker's HTTP endpoints and decode their JSON."""

    def __init__(self, base_url: str, timeout: float = 10.0) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout

    def request(self, method: str, path: str, query: dict[str, Any] | None = None, body: Any = None) -> Any:
        """Send one request and return the decoded JSON body; raise WorkerRequestError on failure."""
        url = self.base_url + path
        if query:
            url += "?" + urllib.parse.urlencode({key: value for key, value in query.items() if value not in (None, "")})
        data = json.dumps(body).encode() if body is not None else None
        request = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                return json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")
            try:
                body = json.loads(detail)
                detail = body.get("error", detail)
                if body.get("parameter"):
                    detail = f"{detail} (parameter: {body['parameter']})"
            except (ValueError, AttributeError):
                pass
            raise WorkerRequestError(f"{method} {path} failed with HTTP {exc.code}: {detail}", exc.code) from None
        except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
            raise WorkerRequestError(f"worker at {self.base_url} is unreachable: {exc}") from None

    def stats(self) -> dict[str, Any]:
        """Return the worker's counters."""
        return self.request("GET", "/stats")

    def ready(self) -> bool:
        """Return True once the worker finished table recovery."""
        try:
            return bool(self.request("GET", "/ready").get("ready"))
        except WorkerRequestError:
            return False

    def recommend(self, user_id: str, k: int = 10, categories: list[str] | None = None, keywords: list[str] | None = None) -> dict[str, Any]:
        """Return recommendations for a user."""
        query = {"k": k, "categories": ",".join(categories or []), "keywords": ",".join(keywords or [])}
        return self.request("GET", f"/users/{urllib.parse.quote(user_id, safe='')}/recommendations", query)

    def rerank(self, user_id: str, image_ids: list[str], alpha: float = 0.5) -> dict[str, Any]:
        """Return the image ids re-ranked to the user's style."""
        return self.request("POST", f"/users/{urllib.parse.quote(user_id, safe='')}/rerank", body={"image_ids": image_ids, "alpha": alpha})
