"""A small client for Ollama's HTTP API (https://github.com/ollama/ollama/blob/main/docs/api.md).

Only what the analysis worker and the health monitor need: ``/api/version``, ``/api/tags``,
``/api/ps`` and a streamed ``/api/chat`` with a JSON-schema ``format``, all over one pooled
``requests.Session`` with separate connect and read timeouts. Errors are sorted into the few
kinds the queue treats differently:

- ``OllamaUnavailable``: connection refused/reset, 5xx, a non-Ollama answer.
  The job waits and retries with backoff; nothing is lost.
- ``ModelMissing``: Ollama's 404 ``model '...' not found``. The job waits until
  the model is pulled.
- ``OllamaTimeout``: no answer within ``ollama.timeout_seconds``. Retried once.
- ``OllamaRequestError``: any other 4xx (e.g. the runner's "prompt is longer than the context
  length"), passed through. Retrying the same request cannot help.
- ``AnswerTruncated``: Ollama stopped at ``num_predict`` (``done_reason: "length"``): the
  answer is cut, which is its own cause, not "the model wrote invalid JSON".

``keep_alive`` goes out as Ollama parses it (``api/types.go``): a JSON number is seconds, a
string is a Go duration and needs a unit (``"600"`` is refused with 400 "missing unit").
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import NewConnectionError

# Tokens reserved for the answer; the result schema's item caps keep real answers well under it.
NUM_PREDICT = 2048
# Low temperature: the same drive should give the same advice, and small models
# drift off the schema's intent when sampling is loose.
TEMPERATURE = 0.1
PROBE_TIMEOUT = 5.0
# Connecting is quick or not happening (Ollama runs on this host or the LAN); the read
# timeout is what grows with a slow model.
CONNECT_TIMEOUT = 3.0
# The worker threads and the monitor share the pool; more than this is never in flight.
POOL_SIZE = 4
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


class AnswerTruncated(OllamaError):
    """The answer stopped at the token limit; ``content`` is what came before the cut."""

    kind = "truncated"

    def __init__(self, message: str, content: str) -> None:
        super().__init__(message)
        self.content = content


@dataclass
class ChatResult:
    content: str
    model: str
    done_reason: str | None
    wall_seconds: float
    stats: dict[str, Any] = field(default_factory=dict)


def normalize_model_name(name: str) -> str:
    """Ollama's canonical short name: registry prefix dropped, default tag ``latest``,
    lower case (Ollama compares model names case-insensitively)."""
    name = name.strip().lower()
    for prefix in ("registry.ollama.ai/library/", "registry.ollama.ai/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    if ":" not in name.rsplit("/", 1)[-1]:
        name += ":latest"
    return name


def keep_alive_value(value: str | int | float) -> str | int | float:
    """``ollama.keep_alive`` as Ollama accepts it: numbers stay numbers (seconds); a string
    is sent as written (config validation has made sure it carries a unit)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


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
        self,
        base_url: str,
        timeout_seconds: float,
        keep_alive: str | int | float,
        num_ctx: int,
        connect_timeout: float = CONNECT_TIMEOUT,
    ) -> None:
        self.base_url = base_url.rstrip("/")
        self.timeout = float(timeout_seconds)
        self.connect_timeout = connect_timeout
        self.keep_alive = keep_alive_value(keep_alive)
        self.num_ctx = num_ctx
        self.session = requests.Session()
        # Ollama sits on the server or the LAN: an http_proxy (or a .netrc) inherited from
        # the environment must not reroute it or add credentials.
        self.session.trust_env = False
        # No automatic retries: the queue decides what a failure means and when to retry.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=POOL_SIZE, max_retries=0)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)
        self.session.headers.update({"Accept": "application/json"})

    def close(self) -> None:
        self.session.close()

    def _request(
        self, method: str, path: str, body: Any, timeout: float, stream: bool = False
    ) -> requests.Response:
        try:
            return self.session.request(
                method,
                self.base_url + path,
                json=body,
                timeout=(min(self.connect_timeout, timeout), timeout),
                stream=stream,
                allow_redirects=False,
            )
        except requests.ConnectTimeout as exc:
            raise OllamaUnavailable(
                f"cannot connect to Ollama: {exc}", connect_failed=True
            ) from None
        except requests.ReadTimeout:
            # Connected, but the answer did not come within the timeout.
            raise OllamaTimeout(f"no answer from Ollama within {timeout:g} s") from None
        except requests.ConnectionError as exc:
            if _connect_failed(exc):
                # Refused, no route, DNS: Ollama is not there right now.
                raise OllamaUnavailable(
                    f"cannot connect to Ollama: {_reason(exc)}", connect_failed=True
                ) from None
            # The connection dropped mid-request (Ollama restarted, crashed, OOM-killed).
            raise OllamaUnavailable(f"connection to Ollama failed: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise OllamaUnavailable(f"request to Ollama failed: {_reason(exc)}") from None

    def _get_json(self, path: str, timeout: float) -> Any:
        with self._request("GET", path, None, timeout) as resp:
            if resp.status_code != 200:
                raise OllamaUnavailable(
                    f"GET {path} answered {resp.status_code}: {_error_text(resp.content)}"
                )
            try:
                return resp.json()
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

    def running(self, timeout: float = PROBE_TIMEOUT) -> list[LoadedModel]:
        """The models Ollama holds in memory (``/api/ps``), with how much of each is in VRAM."""
        payload = self._get_json("/api/ps", timeout)
        models = payload.get("models") if isinstance(payload, dict) else None
        if not isinstance(models, list):
            raise OllamaUnavailable("/api/ps answered without a model list")
        return [LoadedModel.from_json(m) for m in models if isinstance(m, dict)]

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
            # Streamed, as Ollama answers by default: the read timeout then bounds the gap
            # between tokens, and the whole answer is bounded by ``timeout_seconds`` below.
            "stream": True,
            "format": schema,
            "keep_alive": self.keep_alive,
            # A model that can think would spend num_predict on thinking before the answer.
            "think": False,
            "options": {
                "temperature": TEMPERATURE,
                # Ollama's default context is smaller than the model's; without
                # this the prompt would be cut silently from the front.
                "num_ctx": self.num_ctx,
                "num_predict": NUM_PREDICT,
            },
        }
        started = time.monotonic()
        with self._request("POST", "/api/chat", body, self.timeout, stream=True) as resp:
            status = resp.status_code
            if status != 200:
                text = _error_text(resp.content)
                if status == 404:
                    if _MODEL_NOT_FOUND.search(text):
                        raise ModelMissing(text)
                    # A 404 that is not Ollama's model error: the URL is not an Ollama API.
                    raise OllamaUnavailable(f"/api/chat answered 404: {text}")
                if status >= 500:
                    raise OllamaUnavailable(f"Ollama answered {status}: {text}")
                raise OllamaRequestError(f"Ollama refused the request ({status}): {text}")
            parts: list[str] = []
            final: dict[str, Any] | None = None
            for chunk in self._chunks(resp, started):
                if isinstance(chunk.get("error"), str):
                    # An error after the 200 (the runner failed mid-answer): transient.
                    raise OllamaUnavailable(f"Ollama failed mid-answer: {chunk['error'][:300]}")
                message = chunk.get("message")
                piece = message.get("content") if isinstance(message, dict) else None
                if not isinstance(piece, str):
                    raise OllamaUnavailable("Ollama's /api/chat answer is not a chat response")
                parts.append(piece)
                if chunk.get("done") is True:
                    final = chunk
                    break
        wall = time.monotonic() - started
        if final is None:
            raise OllamaUnavailable("Ollama's /api/chat answer ended before it was done")
        content = "".join(parts)
        done_reason = final.get("done_reason")
        if done_reason == "length":
            raise AnswerTruncated(
                f"the answer was cut at the token limit (num_predict {NUM_PREDICT}, "
                'done_reason "length") after '
                f"{final.get('eval_count', '?')} tokens",
                content,
            )
        stats = {
            key: final[key]
            for key in (
                "total_duration",
                "load_duration",
                "prompt_eval_count",
                "prompt_eval_duration",
                "eval_count",
                "eval_duration",
            )
            if isinstance(final.get(key), int)
        }
        return ChatResult(
            content=content,
            model=str(final.get("model") or model),
            done_reason=done_reason if isinstance(done_reason, str) else None,
            wall_seconds=wall,
            stats=stats,
        )

    def _chunks(self, resp: requests.Response, started: float) -> Iterator[dict[str, Any]]:
        """The NDJSON objects of a streamed answer, within ``timeout_seconds`` in total."""
        try:
            for line in resp.iter_lines():
                if time.monotonic() - started > self.timeout:
                    raise OllamaTimeout(f"no complete answer from Ollama within {self.timeout:g} s")
                if not line.strip():
                    continue
                try:
                    chunk = json.loads(line)
                except ValueError:
                    raise OllamaUnavailable("Ollama's /api/chat answer is not NDJSON") from None
                if not isinstance(chunk, dict):
                    raise OllamaUnavailable("Ollama's /api/chat answer is not a chat response")
                yield chunk
        except requests.ConnectionError as exc:
            # iter_lines wraps a read timeout between chunks as a ConnectionError.
            if "timed out" in str(exc).lower():
                raise OllamaTimeout(f"Ollama stopped answering for {self.timeout:g} s") from None
            raise OllamaUnavailable(f"connection to Ollama failed: {_reason(exc)}") from None
        except requests.RequestException as exc:
            raise OllamaUnavailable(f"connection to Ollama failed: {_reason(exc)}") from None


@dataclass(frozen=True)
class LoadedModel:
    """One entry of ``/api/ps``: ``size`` is the model's memory, ``size_vram`` the part of it
    on the GPU (0: it runs on the CPU)."""

    name: str
    size: int | None
    size_vram: int | None
    expires_at: str | None

    @classmethod
    def from_json(cls, entry: dict[str, Any]) -> LoadedModel:
        name = entry.get("name") or entry.get("model") or ""

        def count(key: str) -> int | None:
            value = entry.get(key)
            return value if isinstance(value, int) and not isinstance(value, bool) else None

        expires = entry.get("expires_at")
        return cls(
            str(name),
            count("size"),
            count("size_vram"),
            expires if isinstance(expires, str) else None,
        )


def _reason(exc: BaseException) -> str:
    """The innermost cause's words, not urllib3's nested reprs."""
    inner: BaseException = exc
    for _ in range(8):  # requests -> urllib3 -> socket: a few levels, never a loop
        arg = inner.args[0] if inner.args else None
        nxt = getattr(arg, "reason", None) or (arg if isinstance(arg, BaseException) else None)
        if not isinstance(nxt, BaseException) or nxt is inner:
            break
        inner = nxt
    return f"{inner.__class__.__name__}: {inner}"[:MAX_ERROR_TEXT]


def _connect_failed(exc: requests.ConnectionError) -> bool:
    """True when no connection was made at all (urllib3's NewConnectionError inside)."""
    seen: BaseException | None = exc
    for _ in range(6):
        if seen is None:
            return False
        if isinstance(seen, NewConnectionError):
            return True
        arg = seen.args[0] if seen.args else None
        seen = getattr(arg, "reason", None) or (arg if isinstance(arg, BaseException) else None)
    return False
