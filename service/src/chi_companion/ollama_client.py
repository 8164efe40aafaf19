"""A small client for Ollama's HTTP API (https://github.com/ollama/ollama/blob/main/docs/api.md).

Only what the analysis worker and the health monitor need: ``/api/version``,
``/api/tags`` and a non-streaming ``/api/chat`` with a JSON-schema ``format``.
Errors are sorted into the few kinds the queue treats differently:

- ``OllamaUnavailable``: connection refused/reset, 5xx, a non-Ollama answer.
  The job waits and retries with backoff; nothing is lost.
- ``ModelMissing``: Ollama's 404 ``model '...' not found``. The job waits until
  the model is pulled.
- ``OllamaTimeout``: no answer within ``ollama.timeout_seconds``. Retried once.
- ``OllamaRequestError``: any other 4xx. Retrying the same request cannot help.
"""

from __future__ import annotations

import http.client
import json
import re
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from typing import Any

# Tokens reserved for the answer; the result schema's item caps keep real answers well under it.
NUM_PREDICT = 2048
# Low temperature: the same drive should give the same advice, and small models
# drift off the schema's intent when sampling is loose.
TEMPERATURE = 0.1
PROBE_TIMEOUT = 5.0
MAX_ERROR_TEXT = 300
_MODEL_NOT_FOUND = re.compile(r"model\s.*not found", re.IGNORECASE)


class OllamaError(Exception):
    kind = "error"


class OllamaUnavailable(OllamaError):
    kind = "unavailable"

    def __init__(self, message: str, connect_failed: bool = False) -> None:
        super().__init__(message)
        # True when no connection could be made at all: Ollama is down, as opposed
        # to up but failing (5xx, a dropped answer).
        self.connect_failed = connect_failed


class ModelMissing(OllamaError):
    kind = "model_missing"


class OllamaTimeout(OllamaError):
    kind = "timeout"


class OllamaRequestError(OllamaError):
    kind = "request_error"


@dataclass
class ChatResult:
    content: str
    model: str
    done_reason: str | None
    wall_seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


def normalize_model_name(name: str) -> str:
    """Ollama's canonical short name: registry prefix dropped, default tag ``latest``."""
    name = name.strip()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def _error_text(body: bytes) -> str:
    try:
        payload = json.loads(body)
    except ValueError:
        return body.decode("utf-8", "replace").strip()[:MAX_ERROR_TEXT]
    if isinstance(payload, dict) and isinstance(payload.get("error"), str):
        return payload["error"][:MAX_ERROR_TEXT]
    return json.dumps(payload)[:MAX_ERROR_TEXT]


class OllamaClient:
    def __init__(
        self, base_url: str, timeout_seconds: float, keep_alive: str, num_ctx: int
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout_seconds)
        self.keep_alive = keep_alive
        self.num_ctx = num_ctx
        # An empty ProxyHandler: Ollama sits on the server or the LAN, and an
        # http_proxy inherited from the environment must not reroute it.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, body: Any, timeout: float) -> tuple[int, bytes]:
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(
            self.base_url + path,
            data=data,
            method=method,
            headers={"Content-Type": "application/json", "Accept": "application/json"},
        )
        try:
            with self._opener.open(req, timeout=timeout) as resp:
                return int(resp.status), resp.read()
        except urllib.error.HTTPError as exc:
            with exc:
                payload = exc.read()
            return int(exc.code), payload
        except urllib.error.URLError as exc:
            # Raised while connecting: refused, no route, DNS, or a connect timeout.
            # All mean "Ollama is not there right now".
            raise OllamaUnavailable(
                f"cannot connect to Ollama: {exc.reason}", connect_failed=True
            ) from None
        except TimeoutError:
            # Connected, but the answer did not come within the timeout.
            raise OllamaTimeout(f"no answer from Ollama within {timeout:g} s") from None
        except (http.client.HTTPException, OSError) as exc:
            # The connection dropped mid-request (Ollama restarted, crashed, OOM-killed).
            raise OllamaUnavailable(
                f"connection to Ollama failed: {exc.__class__.__name__}: {exc}"
            ) from None

    def _get_json(self, path: str, timeout: float) -> Any:
        status, body = self._request("GET", path, None, timeout)
        if status != 200:
            raise OllamaUnavailable(f"GET {path} answered {status}: {_error_text(body)}")
        try:
            return json.loads(body)
        except ValueError:
            raise OllamaUnavailable(f"GET {path} did not answer JSON") from None

    def version(self, timeout: float = PROBE_TIMEOUT) -> str:
        payload = self._get_json("/api/version", timeout)
        if not isinstance(payload, dict) or not isinstance(payload.get("version"), str):
            raise OllamaUnavailable("/api/version answered without a version")
        return str(payload["version"])

    def tags(self, timeout: float = PROBE_TIMEOUT) -> list[dict[str, Any]]:
        payload = self._get_json("/api/tags", timeout)
        models = payload.get("models") if isinstance(payload, dict) else None
        if not isinstance(models, list):
            raise OllamaUnavailable("/api/tags answered without a model list")
        return [m for m in models if isinstance(m, dict)]

    @staticmethod
    def find_model(models: list[dict[str, Any]], name: str) -> dict[str, Any] | None:
        wanted = normalize_model_name(name)
        for entry in models:
            for key in ("name", "model"):
                value = entry.get(key)
                if isinstance(value, str) and normalize_model_name(value) == wanted:
                    return entry
        return None

    def chat(self, model: str, messages: list[dict[str, str]], schema: Any) -> ChatResult:
        body = {
            "model": model,
            "messages": messages,
            "stream": False,
            "format": schema,
            "keep_alive": self.keep_alive,
            "options": {
                "temperature": TEMPERATURE,
                # Ollama's default context is smaller than the model's; without
                # this the prompt would be cut silently from the front.
                "num_ctx": self.num_ctx,
                "num_predict": NUM_PREDICT,
            },
        }
        started = time.monotonic()
        status, raw = self._request("POST", "/api/chat", body, self.timeout)
        wall = time.monotonic() - started
        if status == 404:
            text = _error_text(raw)
            if _MODEL_NOT_FOUND.search(text):
                raise ModelMissing(text)
            # A 404 that is not Ollama's model error: the URL is not an Ollama API.
            raise OllamaUnavailable(f"/api/chat answered 404: {text}")
        if status >= 500:
            raise OllamaUnavailable(f"Ollama answered {status}: {_error_text(raw)}")
        if status != 200:
            raise OllamaRequestError(f"Ollama refused the request ({status}): {_error_text(raw)}")
        try:
            payload = json.loads(raw)
            content = payload["message"]["content"]
        except (ValueError, KeyError, TypeError):
            raise OllamaUnavailable("Ollama's /api/chat answer is not a chat response") from None
        if not isinstance(content, str):
            raise OllamaUnavailable("Ollama's /api/chat answer has no text content")
        stats = {
            key: payload[key]
            for key in (
                "total_duration",
                "load_duration",
                "prompt_eval_count",
                "prompt_eval_duration",
                "eval_count",
                "eval_duration",
            )
            if isinstance(payload.get(key), int)
        }
        return ChatResult(
            content=content,
            model=str(payload.get("model") or model),
            done_reason=payload.get("done_reason"),
            wall_seconds=wall,
            stats=stats,
        )
