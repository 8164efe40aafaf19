#!/usr/bin/env python3
"""Ollama API emulator -- a TEST DOUBLE, not Ollama.

Ollama and its model weights cannot be downloaded on the machines that run this project's
tests, so this module stands in for `ollama serve`. It runs no model. It answers the parts of
Ollama's documented HTTP API (github.com/ollama/ollama docs/api.md) that the companion and the
`ollama` Ansible role use, with the same shapes, status codes and error strings:

    GET|HEAD /            "Ollama is running"
    GET|HEAD /api/version {"version": ...}
    GET|HEAD /api/tags    local models (name, model, modified_at, size, digest, details)
    POST /api/show        model details, 404 "model 'x' not found"
    GET  /api/ps          "loaded" models (those used by chat/generate, until keep_alive ends)
    POST /api/pull        NDJSON progress lines ending in {"status": "success"}; stream:false
                          gives one object; a name outside the emulated registry gives
                          {"error": "pull model manifest: file does not exist"}
    DELETE /api/delete    200, or 404 when the model is absent
    POST /api/chat        NDJSON chunks or one object; `format` "json" or a JSON schema gives
    POST /api/generate    JSON content (schema-valid, built from the request)

Faults for tests: `http500`, `drop` (close the connection without answering), `invalid_json`
(chat/generate content that is not JSON), `schema_invalid` (JSON that breaks the requested
schema), `slow` (sleep `delay_seconds` first), `length` (the answer cut at num_predict:
`done_reason: "length"`), `busy` (503, Ollama's "maximum pending requests exceeded"),
`context_length` (the runner's 400 "prompt is longer than the context length"), `none`.
Bound to a loopback address (as Ollama always is here), it refuses a `Host` header that is
not loopback, a private IP, localhost, its own hostname or a .local/.internal/.localhost name,
with 403 and an empty body, as Ollama's allowedHostsMiddleware does.

In-process via `OllamaEmulator.set_fault()`, out-of-process via the test-only endpoint
`POST /__emulator__/fault` (see `_handle_control`).

Fidelity to real Ollama where the companion depends on it (api/types.go, server/routes.go):
`keep_alive` is a JSON number of seconds or a Go duration string, and a string without a unit
is a 400 (`time: missing unit in duration "600"`); a chat/generate for a model that is not
pulled is a 404 `model "x" not found, try pulling it first`; model names compare
case-insensitively; `"think": true` is a 400 (no emulated model can think), `false` is fine.

Standard library only: the release-archive builder (build_release.py) copies this file as
`bin/ollama` into a fake Ollama release that a bare Debian host runs with nothing but python3.
Command line, mirroring the real binary:

    ollama serve            honours OLLAMA_HOST (default 127.0.0.1:11434) and OLLAMA_MODELS
                            (pulled models persist there as small files, like real Ollama)
    ollama -v | --version   "ollama version is X" (asks the running server, as Ollama does)
    ollama list | ps | pull NAME | rm NAME
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import ipaddress
import json
import math
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

# build_release.py rewrites this exact line to give each fake release its own version.
EMULATOR_VERSION = "0.12.3"

FAULT_KINDS = (
    *("none", "http500", "drop", "invalid_json", "schema_invalid", "slow"),
    *("length", "busy", "context_length"),
)
# Faults that only make sense where a model produces content.
_CONTENT_FAULTS = ("invalid_json", "schema_invalid", "length", "busy", "context_length")
# Ollama's scheduler refusal (server/sched.go ErrMaxQueue), answered 503.
BUSY_ERROR = "server busy, please try again.  maximum pending requests exceeded"
CONTEXT_ERROR = "prompt is longer than the context length"
_CONTENT_PATHS = ("/api/chat", "/api/generate")
CONTROL_PREFIX = "/__emulator__/"

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11434
REGISTRY_HOST = "registry.ollama.ai"

# The emulated registry: what `pull` can fetch. Sizes/details are those the real registry
# shows for these tags, so `ollama list` output looks familiar.
_CATALOGUE: dict[str, dict[str, Any]] = {
    "gemma2:2b": {
        "size": 1629518495,
        "family": "gemma2",
        "params": "2.6B",
        "quant": "Q4_0",
        "ctx": 8192,
    },
    "gemma2:9b": {
        "size": 5443152417,
        "family": "gemma2",
        "params": "9.2B",
        "quant": "Q4_0",
        "ctx": 8192,
    },
    "gemma2:latest": {
        "size": 5443152417,
        "family": "gemma2",
        "params": "9.2B",
        "quant": "Q4_0",
        "ctx": 8192,
    },
    "gemma3:1b": {
        "size": 815319791,
        "family": "gemma3",
        "params": "999.89M",
        "quant": "Q4_K_M",
        "ctx": 32768,
    },
    "llama3.2:1b": {
        "size": 1321098329,
        "family": "llama",
        "params": "1.2B",
        "quant": "Q8_0",
        "ctx": 131072,
    },
    "llama3.2:3b": {
        "size": 2019393189,
        "family": "llama",
        "params": "3.2B",
        "quant": "Q4_K_M",
        "ctx": 131072,
    },
    "llama3.2:latest": {
        "size": 2019393189,
        "family": "llama",
        "params": "3.2B",
        "quant": "Q4_K_M",
        "ctx": 131072,
    },
    "qwen2.5:0.5b": {
        "size": 397821319,
        "family": "qwen2",
        "params": "494.03M",
        "quant": "Q4_K_M",
        "ctx": 32768,
    },
}
_GENERIC_ENTRY = {
    "size": 1000000000,
    "family": "llama",
    "params": "1.0B",
    "quant": "Q4_0",
    "ctx": 8192,
}

# Words in prompts that look like parameter names but are not.
_STOPWORDS = {
    "JSON",
    "OBD",
    "II",
    "DTC",
    "DTCS",
    "API",
    "UTC",
    "ISO",
    "HTTP",
    "URL",
    "ID",
    "AND",
    "THE",
    "NOT",
    "FOR",
    "YOU",
    "ARE",
    "MIN",
    "MAX",
    "MEAN",
    "OK",
    "N/A",
    "NULL",
    "TRUE",
    "FALSE",
}


# --------------------------------------------------------------------------- helpers


def normalize_name(name: str) -> str:
    """Canonical short name as Ollama displays it: default tag `latest`, no registry prefix."""
    name = name.strip()
    for prefix in (f"{REGISTRY_HOST}/library/", f"{REGISTRY_HOST}/"):
        if name.startswith(prefix):
            name = name[len(prefix) :]
    last = name.rsplit("/", 1)[-1]
    if ":" not in last:
        name = f"{name}:latest"
    return name


def go_time(ts: float | None = None) -> str:
    """A timestamp formatted like Go's time.Time JSON (RFC 3339 with nanoseconds)."""
    dt = datetime.fromtimestamp(time.time() if ts is None else ts, tz=UTC)
    return dt.strftime("%Y-%m-%dT%H:%M:%S.%f") + "000Z"


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


_GO_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0}
_GO_UNITS["h"] = 3600.0
_GO_PART_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(ns|us|µs|μs|ms|s|m|h)")


def parse_go_duration(text: str) -> float:
    """Seconds from a Go duration string, as time.ParseDuration reads it; ValueError with
    Go's own message otherwise."""
    rest, sign = text, 1.0
    if rest[:1] in ("-", "+"):
        sign, rest = (-1.0 if rest[0] == "-" else 1.0), rest[1:]
    if rest == "0":
        return 0.0
    if not rest:
        raise ValueError(f'time: invalid duration "{text}"')
    total, pos = 0.0, 0
    while pos < len(rest):
        match = _GO_PART_RE.match(rest, pos)
        if match is None:
            if re.fullmatch(r"\d+(\.\d*)?|\.\d+", rest[pos:]):
                raise ValueError(f'time: missing unit in duration "{text}"')
            raise ValueError(f'time: invalid duration "{text}"')
        total += float(match.group(1)) * _GO_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


# Ollama refuses CUDA devices whose driver is older than this major version
# (its GPU docs: "driver version 550 and newer"; discover/cuda_compat.go).
GPU_MIN_DRIVER = 550


def gpu_offload_bytes(model_size: int) -> int:
    """Bytes of a model Ollama would place in GPU memory on this machine: 0 (CPU) or all of it.

    Decided as Ollama decides at load time, from what `nvidia-smi` reports: no usable device
    (nvidia-smi missing or failing), a driver older than GPU_MIN_DRIVER, or less free VRAM than
    the model needs all mean the CPU. Only test hosts with the fake nvidia-smi
    (tests/gpu_double) have a "GPU"; everywhere else this is 0, as before. The real Ollama can
    also split a model between GPU and CPU; the emulator does not.
    """
    try:
        result = subprocess.run(
            [
                "nvidia-smi",
                "--query-gpu=driver_version,memory.free",
                "--format=csv,noheader,nounits",
            ],
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return 0
    if result.returncode != 0:
        return 0
    for line in result.stdout.splitlines():
        driver, _, free_mib = (part.strip() for part in line.partition(","))
        try:
            usable = int(driver.split(".")[0]) >= GPU_MIN_DRIVER
            fits = int(free_mib) * 1024 * 1024 >= model_size
        except ValueError:
            continue
        if usable and fits:
            return model_size
    return 0


def parse_keep_alive(value: Any, default_seconds: float = 300.0) -> float:
    """Seconds from keep_alive as Ollama's api.Duration reads it: absent means the default, a
    JSON number is seconds, a string is a Go duration (ValueError, e.g. "600" without a unit)."""
    if value is None:
        return default_seconds
    if isinstance(value, bool):
        raise ValueError("json: cannot unmarshal bool into Go value of type api.Duration")
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        return parse_go_duration(value)
    raise ValueError(f"Unsupported type: '{type(value).__name__}'")


def parse_ollama_host(value: str | None) -> tuple[str, int]:
    """(host, port) from OLLAMA_HOST the way Ollama reads it (scheme and path ignored)."""
    text = (value or "").strip()
    if not text:
        return DEFAULT_HOST, DEFAULT_PORT
    text = re.sub(r"^[a-zA-Z][a-zA-Z0-9+.-]*://", "", text).split("/", 1)[0]
    if text.startswith("["):
        host, _, rest = text[1:].partition("]")
        port = rest.lstrip(":")
        return host, int(port) if port else DEFAULT_PORT
    if text.count(":") == 1:
        host, port = text.split(":")
        return host or DEFAULT_HOST, int(port) if port else DEFAULT_PORT
    return text, DEFAULT_PORT


def find_parameter_names(text: str, limit: int = 12) -> list[str]:
    """Names in a prompt that look like OBD-II parameters (RPM, COOLANT_TEMP, engine_load)."""
    found: list[str] = []
    for match in re.finditer(r"\b([A-Z][A-Z0-9_]{2,}|[a-z][a-z0-9]*_[a-z0-9_]+)\b", text):
        word = match.group(1)
        if word.upper() in _STOPWORDS or word in found:
            continue
        found.append(word)
        if len(found) >= limit:
            break
    return found


# --------------------------------------------------------------------------- schema instances


class _Context:
    """What generated content may mention: the model and the parameter names of the prompt."""

    def __init__(self, model: str, prompt: str) -> None:
        self.model = model
        self.prompt = prompt
        self.params = find_parameter_names(prompt) or ["the recorded data"]
        self._next = 0

    def param(self) -> str:
        value = self.params[self._next % len(self.params)]
        self._next += 1
        return value

    def sentence(self, key: str) -> str:
        param = self.param()
        key_l = key.lower()
        if "summary" in key_l:
            names = ", ".join(self.params[:4])
            return f"Emulated analysis by {self.model}: reviewed {names}."
        if "recommend" in key_l:
            return f"Check {param}: its range in this drive deserves a closer look."
        if "evidence" in key_l:
            return f"{param} values reported in the prompt"
        if "categor" in key_l:
            return "performance"
        if "severity" in key_l or "level" in key_l:
            return "low"
        if "param" in key_l or key_l in {"name", "pid", "signal"}:
            return param
        return f"{key or 'value'} about {param}"


def _resolve(schema: Any, root: dict[str, Any]) -> Any:
    """Follow a local $ref (#/$defs/x or #/definitions/x)."""
    seen = 0
    while isinstance(schema, dict) and isinstance(schema.get("$ref"), str) and seen < 20:
        ref = schema["$ref"]
        if not ref.startswith("#"):
            return {}
        node: Any = root
        for raw_part in ref.lstrip("#").strip("/").split("/"):
            if not raw_part:
                continue
            part = raw_part.replace("~1", "/").replace("~0", "~")
            node = node.get(part, {}) if isinstance(node, dict) else {}
        merged = dict(node) if isinstance(node, dict) else {}
        merged.update({k: v for k, v in schema.items() if k != "$ref"})
        schema = merged
        seen += 1
    return schema


def _number(schema: dict[str, Any], key: str, integer: bool, index: int) -> float | int:
    low = schema.get("minimum")
    high = schema.get("maximum")
    ex_low = schema.get("exclusiveMinimum")
    ex_high = schema.get("exclusiveMaximum")
    step = 1 if integer else 0.01
    if isinstance(ex_low, (int, float)) and not isinstance(ex_low, bool):
        low = ex_low + step if low is None else max(low, ex_low + step)
    if isinstance(ex_high, (int, float)) and not isinstance(ex_high, bool):
        high = ex_high - step if high is None else min(high, ex_high - step)
    key_l = key.lower()
    if key_l in {"rank", "priority", "order", "index"}:
        value: float = index + 1
    elif "confidence" in key_l or "score" in key_l or "probability" in key_l:
        value = 0.8
    else:
        value = 1 if integer else 0.5
    if low is not None and value < low:
        value = low
    if high is not None and value > high:
        value = high
    multiple = schema.get("multipleOf")
    if isinstance(multiple, (int, float)) and multiple > 0:
        value = math.ceil(value / multiple) * multiple
        if high is not None and value > high:
            value = math.floor(high / multiple) * multiple
    if integer:
        whole = math.ceil(value)
        if high is not None and whole > high:
            whole = math.floor(high)
        return int(whole)
    return round(float(value), 6)


def _string(schema: dict[str, Any], key: str, ctx: _Context) -> str:
    fmt = schema.get("format")
    if fmt == "date-time":
        return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    if fmt == "date":
        return datetime.now(UTC).strftime("%Y-%m-%d")
    if fmt == "time":
        return datetime.now(UTC).strftime("%H:%M:%SZ")
    if fmt == "email":
        return "emulator@example.invalid"
    if fmt in {"uri", "url"}:
        return "https://example.invalid/emulated"
    if fmt == "uuid":
        return "00000000-0000-4000-8000-000000000000"
    text = ctx.sentence(key)
    pattern = schema.get("pattern")
    if isinstance(pattern, str):
        candidates = [text, ctx.params[0], "emulated", "a", "A", "0", "x1", "value"]
        for candidate in candidates:
            if re.search(pattern, candidate):
                text = candidate
                break
    min_len = int(schema.get("minLength", 0))
    max_len = schema.get("maxLength")
    if len(text) < min_len:
        text = text + "." * (min_len - len(text))
    if isinstance(max_len, int) and len(text) > max_len:
        text = text[:max_len]
    return text


def instance_for(
    schema: Any, ctx: _Context, root: dict[str, Any] | None = None, key: str = "", index: int = 0
) -> Any:
    """A value valid against `schema` (the subset of JSON Schema structured outputs use)."""
    if root is None:
        root = schema if isinstance(schema, dict) else {}
    if schema is True or schema is None:
        return ctx.sentence(key)
    if not isinstance(schema, dict):
        return ctx.sentence(key)
    schema = _resolve(schema, root)
    if "const" in schema:
        return schema["const"]
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    if isinstance(schema.get("allOf"), list):
        merged: dict[str, Any] = {}
        for raw_part in schema["allOf"]:
            part = _resolve(raw_part, root)
            if isinstance(part, dict):
                for name, value in part.items():
                    if name == "properties" and isinstance(value, dict):
                        merged.setdefault("properties", {}).update(value)
                    elif name == "required" and isinstance(value, list):
                        merged.setdefault("required", []).extend(value)
                    else:
                        merged.setdefault(name, value)
        rest = {k: v for k, v in schema.items() if k != "allOf"}
        merged.update({k: v for k, v in rest.items() if k not in ("properties", "required")})
        if "properties" in rest:
            merged.setdefault("properties", {}).update(rest["properties"])
        if "required" in rest:
            merged.setdefault("required", []).extend(rest["required"])
        return instance_for(merged, ctx, root, key, index)
    for combinator in ("anyOf", "oneOf"):
        options = schema.get(combinator)
        if isinstance(options, list) and options:
            non_null = [o for o in options if not (isinstance(o, dict) and o.get("type") == "null")]
            return instance_for((non_null or options)[0], ctx, root, key, index)
    kind = schema.get("type")
    if isinstance(kind, list):
        non_null_types = [t for t in kind if t != "null"]
        kind = non_null_types[0] if non_null_types else "null"
    if kind is None:
        if "properties" in schema:
            kind = "object"
        elif "items" in schema:
            kind = "array"
        else:
            kind = "string"
    if kind == "object":
        props = schema.get("properties") or {}
        result: dict[str, Any] = {}
        for name, sub in props.items():
            result[name] = instance_for(sub, ctx, root, name, index)
        for name in schema.get("required") or []:
            if name not in result:
                result[name] = ctx.sentence(name)
        return result
    if kind == "array":
        items = schema.get("items", {})
        min_items = int(schema.get("minItems", 0))
        max_items = schema.get("maxItems")
        count = max(min_items, min(3, len(ctx.params)))
        if isinstance(max_items, int):
            count = min(count, max_items)
        if isinstance(schema.get("prefixItems"), list):
            prefix = schema["prefixItems"]
            return [instance_for(s, ctx, root, key, i) for i, s in enumerate(prefix)]
        values = [instance_for(items, ctx, root, key, i) for i in range(count)]
        if schema.get("uniqueItems"):
            unique: list[Any] = []
            for value in values:
                if value not in unique:
                    unique.append(value)
            values = unique
        return values
    if kind == "integer":
        return _number(schema, key, True, index)
    if kind == "number":
        return _number(schema, key, False, index)
    if kind == "boolean":
        return True
    if kind == "null":
        return None
    return _string(schema, key, ctx)


def break_schema(schema: Any, valid: Any, root: dict[str, Any] | None = None) -> Any:
    """JSON that parses but violates `schema`, derived from a valid instance."""
    if root is None:
        root = schema if isinstance(schema, dict) else {}
    schema = _resolve(schema, root) if isinstance(schema, dict) else schema
    if isinstance(valid, dict) and isinstance(schema, dict):
        required = list(schema.get("required") or [])
        broken = dict(valid)
        if required:
            broken.pop(required[0], None)
            return broken
        for name, sub in (schema.get("properties") or {}).items():
            if name in broken:
                sub_r = _resolve(sub, root) if isinstance(sub, dict) else sub
                sub_type = sub_r.get("type") if isinstance(sub_r, dict) else None
                broken[name] = [] if sub_type != "array" else "not an array"
                return broken
        return ["not", "an", "object"]
    if isinstance(valid, list):
        return {"not": "an array"}
    if isinstance(valid, str):
        return 12345
    return "not the expected type"


# --------------------------------------------------------------------------- state


class _Fault:
    def __init__(
        self, kind: str = "none", times: int | None = None, paths: tuple[str, ...] | None = None
    ) -> None:
        self.kind = kind
        self.remaining = times
        self.paths = paths

    def applies_to(self, path: str) -> bool:
        if self.kind == "none":
            return False
        if self.paths is not None:
            return any(path.startswith(p) for p in self.paths)
        if self.kind in _CONTENT_FAULTS:
            return path in _CONTENT_PATHS
        return path == "/" or path.startswith("/api/")


class _Model:
    def __init__(self, name: str, modified: float | None = None) -> None:
        self.name = name
        entry = _CATALOGUE.get(name, _GENERIC_ENTRY)
        self.size = int(entry["size"])
        self.family = str(entry["family"])
        self.params = str(entry["params"])
        self.quant = str(entry["quant"])
        self.ctx = int(entry["ctx"])
        self.digest = _digest(f"emulated-manifest:{name}")
        self.modified = time.time() if modified is None else modified

    def details(self) -> dict[str, Any]:
        return {
            "parent_model": "",
            "format": "gguf",
            "family": self.family,
            "families": [self.family],
            "parameter_size": self.params,
            "quantization_level": self.quant,
        }

    def tag_entry(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "model": self.name,
            "modified_at": go_time(self.modified),
            "size": self.size,
            "digest": self.digest,
            "details": self.details(),
        }

    def layers(self) -> list[tuple[str, int]]:
        """(digest, size) of the layers a pull "downloads": weights, template, license, params."""
        weights = self.size - 12000
        return [
            (_digest(f"{self.name}:weights"), max(weights, 1)),
            (_digest(f"{self.name}:template"), 358),
            (_digest(f"{self.name}:license"), 8433),
            (_digest(f"{self.name}:params"), 65),
        ]


class _Store:
    """Local models, optionally persisted under OLLAMA_MODELS in Ollama's own layout."""

    def __init__(self, models_dir: Path | None) -> None:
        self.models_dir = models_dir
        self.models: dict[str, _Model] = {}
        if models_dir is not None:
            self._load()

    def _manifest_path(self, name: str) -> Path:
        assert self.models_dir is not None
        base, _, tag = name.rpartition(":")
        parts = base.split("/")
        if len(parts) == 1:
            parts = ["library", *parts]
        return self.models_dir.joinpath("manifests", REGISTRY_HOST, *parts, tag)

    def _load(self) -> None:
        assert self.models_dir is not None
        root = self.models_dir / "manifests" / REGISTRY_HOST
        if not root.is_dir():
            return
        for path in root.rglob("*"):
            if not path.is_file():
                continue
            try:
                data = json.loads(path.read_text())
                name = str(data["emulator"]["name"])
            except (OSError, ValueError, KeyError, TypeError):
                continue
            self.models[name] = _Model(name, path.stat().st_mtime)

    def add(self, name: str) -> _Model:
        model = _Model(name)
        if self.models_dir is not None:
            path = self._manifest_path(name)
            path.parent.mkdir(parents=True, exist_ok=True)
            blobs = self.models_dir / "blobs"
            blobs.mkdir(parents=True, exist_ok=True)
            layers = []
            for digest, size in model.layers():
                blob = blobs / f"sha256-{digest}"
                if not blob.exists():
                    # A few bytes stand in for the real layer: this is a test double.
                    blob.write_text(f"ollama-emulator placeholder layer for {name}\n")
                layers.append({"digest": f"sha256:{digest}", "size": size})
            manifest = {
                "schemaVersion": 2,
                "mediaType": "application/vnd.docker.distribution.manifest.v2+json",
                "layers": layers,
                "emulator": {"name": name, "note": "written by the Ollama API emulator"},
            }
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(json.dumps(manifest))
            os.replace(tmp, path)
            model.modified = path.stat().st_mtime
        self.models[name] = model
        return model

    def find(self, name: str) -> _Model | None:
        """The model a request names; Ollama compares names case-insensitively."""
        model = self.models.get(name)
        if model is None:
            folded = name.casefold()
            model = next((m for k, m in self.models.items() if k.casefold() == folded), None)
        return model

    def remove(self, name: str) -> bool:
        model = self.models.pop(name, None)
        if model is None:
            return False
        if self.models_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                self._manifest_path(name).unlink()
            for digest, _ in model.layers():
                with contextlib.suppress(FileNotFoundError):
                    (self.models_dir / "blobs" / f"sha256-{digest}").unlink()
        return True


# --------------------------------------------------------------------------- HTTP


# Go's netip.Addr.IsPrivate: RFC 1918 and the IPv6 unique-local range, nothing more.
_GO_PRIVATE = tuple(
    ipaddress.ip_network(n) for n in ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "fc00::/7")
)


def host_allowed(bound_host: str, host_header: str | None) -> bool:
    """Ollama's allowedHostsMiddleware (server/routes.go): a server bound to a loopback address
    answers only requests whose Host is an IP that is loopback, private or unspecified, or a
    name that is empty, "localhost", this machine's hostname, or ends in .localhost, .local or
    .internal. Anything else gets 403 with an empty body (DNS-rebinding protection). A server
    bound to another address admits every Host."""
    try:
        if not ipaddress.ip_address(bound_host).is_loopback:
            return True
    except ValueError:
        return True
    value = (host_header or "").strip()
    if value.startswith("["):
        host = value[1 : value.find("]")] if "]" in value else value
    else:
        host = value.rsplit(":", 1)[0] if value.count(":") == 1 else value
    try:
        addr = ipaddress.ip_address(host)
    except ValueError:
        addr = None
    if addr is not None and (
        addr.is_loopback or addr.is_unspecified or any(addr in n for n in _GO_PRIVATE)
    ):
        return True
    name = host.lower()
    if name in ("", "localhost", socket.gethostname().lower()):
        return True
    return name.endswith((".localhost", ".local", ".internal"))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    allow_reuse_address = True
    block_on_close = False

    def __init__(self, address: tuple[str, int], emulator: OllamaEmulator) -> None:
        self.emulator = emulator
        self.open_sockets: set[socket.socket] = set()
        self.sockets_lock = threading.Lock()
        family = socket.AF_INET6 if ":" in address[0] else socket.AF_INET
        self.address_family = family
        super().__init__(address, _Handler)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    server_version = "ollama-emulator"
    sys_version = ""

    # -- plumbing
    def setup(self) -> None:
        super().setup()
        with self.server.sockets_lock:
            self.server.open_sockets.add(self.connection)

    def finish(self) -> None:
        try:
            super().finish()
        finally:
            with self.server.sockets_lock:
                self.server.open_sockets.discard(self.connection)

    def log_message(self, format: str, *args: Any) -> None:
        if self.server.emulator.log_requests:
            sys.stderr.write(f"[GIN-emulator] {self.address_string()} {format % args}\n")

    def _read_body(self) -> bytes:
        length = int(self.headers.get("Content-Length") or 0)
        if self.headers.get("Transfer-Encoding", "").lower() == "chunked":
            chunks = []
            while True:
                size = int(self.rfile.readline().split(b";")[0].strip() or b"0", 16)
                if size == 0:
                    self.rfile.readline()
                    break
                chunks.append(self.rfile.read(size))
                self.rfile.readline()
            return b"".join(chunks)
        return self.rfile.read(length) if length > 0 else b""

    def _send_json(self, status: int, payload: Any) -> None:
        body = b"" if payload is None else json.dumps(payload).encode()
        self.send_response(status)
        if payload is not None:
            self.send_header("Content-Type", "application/json; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _send_text(self, status: int, text: str) -> None:
        body = text.encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain; charset=utf-8")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _start_stream(self) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/x-ndjson")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def _stream_line(self, payload: dict[str, Any]) -> None:
        data = json.dumps(payload).encode() + b"\n"
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def _end_stream(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def _drop(self) -> None:
        """Close the connection without any response, as a crashed server would."""
        self.close_connection = True
        with contextlib.suppress(OSError):
            self.connection.shutdown(socket.SHUT_RDWR)

    # -- dispatch
    def do_GET(self) -> None:
        self._dispatch()

    def do_HEAD(self) -> None:
        self._dispatch()

    def do_POST(self) -> None:
        self._dispatch()

    def do_DELETE(self) -> None:
        self._dispatch()

    def do_PUT(self) -> None:
        self._dispatch()

    def _dispatch(self) -> None:
        emu = self.server.emulator
        path = self.path.split("?", 1)[0]
        raw = self._read_body()
        body: Any = None
        if raw:
            try:
                body = json.loads(raw)
            except ValueError:
                body = None
        if path.startswith(CONTROL_PREFIX):
            self._handle_control(path, body)
            return
        if not host_allowed(self.server.server_address[0], self.headers.get("Host")):
            self._send_text(403, "")
            return
        emu._record(self.command, path, body)
        fault = emu._take_fault(path)
        if fault == "slow":
            time.sleep(emu.delay_seconds)
        elif fault == "drop":
            self._drop()
            return
        elif fault == "http500":
            self._send_json(500, {"error": "emulated internal server error"})
            return
        if raw and body is None and path.startswith("/api/"):
            self._send_json(400, {"error": "invalid character in request body"})
            return
        route = _ROUTES.get(path)
        if route is None:
            self._send_text(404, "404 page not found")
            return
        handler = route.get(self.command)
        if handler is None:
            self._send_text(405, "405 method not allowed")
            return
        handler(self, body if isinstance(body, dict) else {}, fault)

    # -- control endpoint (tests only)
    def _handle_control(self, path: str, body: Any) -> None:
        emu = self.server.emulator
        data = body if isinstance(body, dict) else {}
        if path == CONTROL_PREFIX + "fault" and self.command == "POST":
            try:
                if "delay_seconds" in data:
                    emu.delay_seconds = float(data["delay_seconds"])
                paths = data.get("paths")
                emu.set_fault(
                    str(data.get("kind", "none")),
                    data.get("times"),
                    tuple(paths) if isinstance(paths, list) else None,
                )
            except (TypeError, ValueError) as exc:
                self._send_json(400, {"error": str(exc)})
                return
            self._send_json(200, emu.state())
        elif path == CONTROL_PREFIX + "models" and self.command == "POST":
            for name in data.get("add") or []:
                emu.add_model(str(name))
            for name in data.get("remove") or []:
                emu.remove_model(str(name))
            self._send_json(200, emu.state())
        elif path == CONTROL_PREFIX + "state" and self.command == "GET":
            self._send_json(200, emu.state())
        elif path == CONTROL_PREFIX + "requests" and self.command == "GET":
            self._send_json(200, {"requests": [list(r) for r in emu.requests]})
        elif path == CONTROL_PREFIX + "requests" and self.command == "DELETE":
            emu.clear_requests()
            self._send_json(200, {"requests": []})
        else:
            self._send_json(404, {"error": f"unknown emulator control {self.command} {path}"})

    # -- API
    def h_root(self, body: dict[str, Any], fault: str) -> None:
        self._send_text(200, "Ollama is running")

    def h_version(self, body: dict[str, Any], fault: str) -> None:
        self._send_json(200, {"version": self.server.emulator.version})

    def h_tags(self, body: dict[str, Any], fault: str) -> None:
        emu = self.server.emulator
        with emu._lock:
            models = sorted(emu._store.models.values(), key=lambda m: -m.modified)
            payload = {"models": [m.tag_entry() for m in models]}
        self._send_json(200, payload)

    def h_ps(self, body: dict[str, Any], fault: str) -> None:
        emu = self.server.emulator
        now = time.time()
        entries = []
        with emu._lock:
            for name, expires in list(emu._loaded.items()):
                model = emu._store.models.get(name)
                if model is None or expires <= now:
                    emu._loaded.pop(name, None)
                    continue
                entry = model.tag_entry()
                entry.pop("modified_at")
                entry["expires_at"] = go_time(expires)
                entry["size_vram"] = emu._vram.get(name, 0)
                entry["context_length"] = model.ctx
                entries.append(entry)
        self._send_json(200, {"models": entries})

    def _model_name(self, body: dict[str, Any]) -> str | None:
        name = body.get("model") or body.get("name")
        if not isinstance(name, str) or not name.strip():
            self._send_json(400, {"error": "model is required"})
            return None
        return name

    def h_show(self, body: dict[str, Any], fault: str) -> None:
        emu = self.server.emulator
        requested = self._model_name(body)
        if requested is None:
            return
        with emu._lock:
            model = emu._store.find(normalize_name(requested))
        if model is None:
            self._send_json(404, {"error": f"model '{requested}' not found"})
            return
        self._send_json(
            200,
            {
                "license": "Emulated model: no license text (test double).",
                "modelfile": (
                    '# Modelfile generated by "ollama show"\n'
                    f"# To build a new Modelfile based on this, replace FROM with:\n"
                    f"# FROM {model.name}\n\nFROM {model.name}\n"
                ),
                "parameters": 'stop                           "<end_of_turn>"',
                "template": "{{ .Prompt }}",
                "details": model.details(),
                "model_info": {
                    "general.architecture": model.family,
                    "general.parameter_count": 2614341888,
                    f"{model.family}.context_length": model.ctx,
                },
                "capabilities": ["completion"],
                "modified_at": go_time(model.modified),
            },
        )

    def h_delete(self, body: dict[str, Any], fault: str) -> None:
        emu = self.server.emulator
        requested = self._model_name(body)
        if requested is None:
            return
        if not emu.remove_model(requested):
            self._send_json(404, {"error": f"model '{requested}' not found"})
            return
        self._send_json(200, None)

    def h_pull(self, body: dict[str, Any], fault: str) -> None:
        emu = self.server.emulator
        requested = self._model_name(body)
        if requested is None:
            return
        name = normalize_name(requested)
        stream = body.get("stream", True) is not False
        known = emu.in_registry(name)
        model = _Model(name)
        error = "pull model manifest: file does not exist"

        def progress() -> Iterator[dict[str, Any]]:
            yield {"status": "pulling manifest"}
            if not known:
                return
            for digest, size in model.layers():
                short = digest[:12]
                for fraction in (0.0, 0.5, 1.0):
                    if emu.pull_step_seconds:
                        time.sleep(emu.pull_step_seconds)
                    yield {
                        "status": f"pulling {short}",
                        "digest": f"sha256:{digest}",
                        "total": size,
                        "completed": int(size * fraction),
                    }
            yield {"status": "verifying sha256 digest"}
            yield {"status": "writing manifest"}

        if not stream:
            for _ in progress():
                pass
            if not known:
                self._send_json(500, {"error": error})
                return
            emu.add_model(name)
            self._send_json(200, {"status": "success"})
            return
        self._start_stream()
        for line in progress():
            self._stream_line(line)
        if known:
            emu.add_model(name)
            self._stream_line({"status": "success"})
        else:
            self._stream_line({"error": error})
        self._end_stream()

    def h_chat(self, body: dict[str, Any], fault: str) -> None:
        self._generate(body, fault, chat=True)

    def h_generate(self, body: dict[str, Any], fault: str) -> None:
        self._generate(body, fault, chat=False)

    def _generate(self, body: dict[str, Any], fault: str, chat: bool) -> None:
        emu = self.server.emulator
        started = time.monotonic_ns()
        requested = self._model_name(body)
        if requested is None:
            return
        with emu._lock:
            model = emu._store.find(normalize_name(requested))
        if model is None:
            self._send_json(404, {"error": f'model "{requested}" not found, try pulling it first'})
            return
        name = model.name
        try:
            keep_alive = parse_keep_alive(body.get("keep_alive"))
        except ValueError as exc:
            self._send_json(400, {"error": str(exc)})
            return
        # server/routes.go: "think": true on a model without the thinking capability is a 400
        # (no emulated model has it); "think": false is accepted.
        if body.get("think") is True:
            self._send_json(400, {"error": f'"{requested}" does not support thinking'})
            return
        if fault == "busy":
            self._send_json(503, {"error": BUSY_ERROR})
            return
        if fault == "context_length":
            self._send_json(400, {"error": CONTEXT_ERROR})
            return
        stream = body.get("stream", True) is not False
        if chat:
            messages = body.get("messages") or []
            if not isinstance(messages, list):
                self._send_json(400, {"error": "messages must be a list"})
                return
            prompt = "\n".join(str(m.get("content", "")) for m in messages if isinstance(m, dict))
            empty = not messages
        else:
            prompt = str(body.get("system") or "") + "\n" + str(body.get("prompt") or "")
            empty = not body.get("prompt")
        base: dict[str, Any] = {"model": requested, "created_at": go_time()}
        if empty:
            # Ollama's documented load/unload calls: no prompt, just (un)load the model.
            reason = "unload" if keep_alive == 0 else "load"
            emu._set_loaded(name, 0 if keep_alive == 0 else keep_alive)
            reply = dict(base, done=True, done_reason=reason)
            if chat:
                reply["message"] = {"role": "assistant", "content": ""}
            else:
                reply["response"] = ""
            self._send_json(200, reply)
            return
        content = emu.compose(requested, prompt, body.get("format"), fault)
        done_reason = "stop"
        if fault == "length":
            # num_predict reached: the answer stops mid-way, whatever its format.
            content, done_reason = content[: max(1, len(content) // 2)], "length"
        emu._set_loaded(name, keep_alive)
        prompt_tokens = max(1, len(prompt) // 4)
        eval_tokens = max(1, len(content) // 4)
        elapsed = max(time.monotonic_ns() - started, 1000)
        stats = {
            "total_duration": elapsed + 2_000_000,
            "load_duration": 1_000_000,
            "prompt_eval_count": prompt_tokens,
            "prompt_eval_duration": max(elapsed // 3, 1),
            "eval_count": eval_tokens,
            "eval_duration": max(elapsed // 2, 1),
        }
        if not stream:
            reply = dict(base, done=True, done_reason=done_reason, **stats)
            if chat:
                reply["message"] = {"role": "assistant", "content": content}
            else:
                reply["response"] = content
                reply["context"] = [1, 2, 3]
            self._send_json(200, reply)
            return
        self._start_stream()
        for start in range(0, len(content), 16):
            piece = content[start : start + 16]
            chunk = dict(base, created_at=go_time(), done=False)
            if chat:
                chunk["message"] = {"role": "assistant", "content": piece}
            else:
                chunk["response"] = piece
            self._stream_line(chunk)
        final = dict(base, created_at=go_time(), done=True, done_reason=done_reason, **stats)
        if chat:
            final["message"] = {"role": "assistant", "content": ""}
        else:
            final["response"] = ""
            final["context"] = [1, 2, 3]
        self._stream_line(final)
        self._end_stream()


_ROUTES: dict[str, dict[str, Any]] = {
    "/": {"GET": _Handler.h_root, "HEAD": _Handler.h_root},
    "/api/version": {"GET": _Handler.h_version, "HEAD": _Handler.h_version},
    "/api/tags": {"GET": _Handler.h_tags, "HEAD": _Handler.h_tags},
    "/api/ps": {"GET": _Handler.h_ps},
    "/api/show": {"POST": _Handler.h_show},
    "/api/delete": {"DELETE": _Handler.h_delete},
    "/api/pull": {"POST": _Handler.h_pull},
    "/api/chat": {"POST": _Handler.h_chat},
    "/api/generate": {"POST": _Handler.h_generate},
}


# --------------------------------------------------------------------------- public API


class OllamaEmulator:
    """An in-process Ollama API emulator (TEST DOUBLE) on a real loopback HTTP port.

    >>> emu = OllamaEmulator(models=("gemma2:2b",)).start()
    >>> emu.url  # e.g. http://127.0.0.1:40123
    >>> emu.set_fault("http500", times=2)
    >>> emu.stop()
    """

    def __init__(
        self,
        models: Iterable[str] = ("gemma2:2b",),
        version: str = EMULATOR_VERSION,
        *,
        host: str = DEFAULT_HOST,
        port: int = 0,
        models_dir: str | os.PathLike[str] | None = None,
        registry: Iterable[str] | None = None,
        log_requests: bool = False,
    ) -> None:
        self.version = version
        self.host = host
        self.port = port
        self.delay_seconds = 5.0
        self.pull_step_seconds = 0.0
        self.log_requests = log_requests
        self._lock = threading.Lock()
        self._store = _Store(Path(models_dir) if models_dir is not None else None)
        self._registry = (
            set(_CATALOGUE) if registry is None else {normalize_name(n) for n in registry}
        )
        self._fault = _Fault()
        self._requests: list[tuple[str, str, Any]] = []
        self._loaded: dict[str, float] = {}
        # Bytes of each loaded model in GPU memory (Ollama's /api/ps size_vram).
        self._vram: dict[str, int] = {}
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        for name in models:
            self.add_model(name)

    # -- lifecycle
    def start(self) -> OllamaEmulator:
        """Bind (an ephemeral port the first time, the same port after a stop) and serve."""
        if self._server is not None:
            return self
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(
            target=self._server.serve_forever,
            kwargs={"poll_interval": 0.1},
            name="ollama-emulator",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Serve in the calling thread (the CLI's `serve`)."""
        self._server = _Server((self.host, self.port), self)
        self.port = self._server.server_address[1]
        try:
            self._server.serve_forever(poll_interval=0.2)
        finally:
            self._server.server_close()

    def stop(self) -> None:
        """Stop listening and cut open keep-alive connections, so the server is really gone."""
        server, self._server = self._server, None
        if server is None:
            return
        server.shutdown()
        server.server_close()
        with server.sockets_lock:
            sockets = list(server.open_sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None

    def __enter__(self) -> OllamaEmulator:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    # -- models
    def add_model(self, name: str) -> None:
        """Make a model "pulled" (present in /api/tags), as if `ollama pull` had run."""
        with self._lock:
            self._store.add(normalize_name(name))

    def remove_model(self, name: str) -> bool:
        with self._lock:
            canonical = normalize_name(name)
            self._loaded.pop(canonical, None)
            return self._store.remove(canonical)

    @property
    def models(self) -> list[str]:
        with self._lock:
            return sorted(self._store.models)

    def in_registry(self, name: str) -> bool:
        return normalize_name(name) in self._registry

    def add_to_registry(self, name: str) -> None:
        self._registry.add(normalize_name(name))

    def _set_loaded(self, name: str, keep_alive: float) -> None:
        with self._lock:
            fresh = name not in self._loaded
            model = self._store.models.get(name)
        # Like Ollama, place the model when it is loaded, not on later requests that reuse it.
        vram = gpu_offload_bytes(model.size) if fresh and model is not None else None
        with self._lock:
            if keep_alive == 0:
                self._loaded.pop(name, None)
                self._vram.pop(name, None)
                return
            if keep_alive < 0:
                self._loaded[name] = time.time() + 10 * 365 * 86400
            else:
                self._loaded[name] = time.time() + keep_alive
            if vram is not None:
                self._vram[name] = vram

    # -- faults
    def set_fault(
        self, kind: str, times: int | None = None, paths: Iterable[str] | None = None
    ) -> None:
        """Inject a fault for the next `times` matching requests (None: until cleared).

        By default http500/drop/slow hit every API request and invalid_json/schema_invalid
        hit chat/generate; `paths` (path prefixes) narrows that.
        """
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; expected one of {FAULT_KINDS}")
        if times is not None and int(times) < 1:
            raise ValueError("times must be >= 1 or None")
        with self._lock:
            self._fault = _Fault(
                kind,
                None if times is None else int(times),
                tuple(paths) if paths is not None else None,
            )

    @property
    def fault(self) -> str:
        with self._lock:
            return self._fault.kind

    def _take_fault(self, path: str) -> str:
        with self._lock:
            fault = self._fault
            if not fault.applies_to(path):
                return "none"
            if fault.remaining is not None:
                fault.remaining -= 1
                if fault.remaining <= 0:
                    self._fault = _Fault()
            return fault.kind

    # -- observation
    def _record(self, method: str, path: str, body: Any) -> None:
        with self._lock:
            self._requests.append((method, path, body))

    @property
    def requests(self) -> list[tuple[str, str, Any]]:
        """Every API request seen: (method, path, parsed JSON body or None)."""
        with self._lock:
            return list(self._requests)

    def clear_requests(self) -> None:
        with self._lock:
            self._requests.clear()

    def state(self) -> dict[str, Any]:
        with self._lock:
            return {
                "version": self.version,
                "fault": self._fault.kind,
                "fault_remaining": self._fault.remaining,
                "delay_seconds": self.delay_seconds,
                "models": sorted(self._store.models),
                "requests": len(self._requests),
                "test_double": True,
            }

    # -- content
    def compose(self, model: str, prompt: str, fmt: Any, fault: str) -> str:
        """The "model output": plain text, or JSON shaped by `format`, or a faulty variant."""
        ctx = _Context(model, prompt)
        if fault == "invalid_json":
            return f"Sure! Here is the analysis of {ctx.params[0]}: {{summary: unfinished"
        if isinstance(fmt, dict):
            valid = instance_for(fmt, ctx)
            if fault == "schema_invalid":
                return json.dumps(break_schema(fmt, valid))
            return json.dumps(valid)
        if fmt == "json":
            if fault == "schema_invalid":
                return json.dumps(["json", "mode", "without", "an", "object"])
            return json.dumps(
                {
                    "response": f"Emulated answer from {model}.",
                    "parameters": ctx.params,
                }
            )
        names = ", ".join(ctx.params[:4])
        return f"Emulated answer from {model} (Ollama API emulator). The prompt mentions {names}."


# --------------------------------------------------------------------------- CLI


def _client_url() -> str:
    host, port = parse_ollama_host(os.environ.get("OLLAMA_HOST"))
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def _api(method: str, path: str, body: Any = None, timeout: float = 10.0) -> Any:
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(
        _client_url() + path, data=data, method=method, headers={"Content-Type": "application/json"}
    )
    return urllib.request.urlopen(request, timeout=timeout)


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if value < 1000 or unit == "TB":
            return f"{value:.0f} {unit}" if unit in ("B", "KB") else f"{value:.1f} {unit}"
        value /= 1000
    return f"{size} B"


def _cmd_version() -> int:
    try:
        with _api("GET", "/api/version", timeout=3) as resp:
            server_version = json.loads(resp.read())["version"]
    except (OSError, ValueError, KeyError):
        print("Warning: could not connect to a running Ollama instance")
        print(f"Warning: client version is {EMULATOR_VERSION}")
        return 0
    print(f"ollama version is {server_version}")
    if server_version != EMULATOR_VERSION:
        print(f"Warning: client version is {EMULATOR_VERSION}")
    return 0


def _connect_error() -> int:
    print("Error: could not connect to ollama app, is it running?", file=sys.stderr)
    return 1


def _cmd_list() -> int:
    try:
        with _api("GET", "/api/tags") as resp:
            models = json.loads(resp.read())["models"]
    except OSError:
        return _connect_error()
    print(f"{'NAME':<24}{'ID':<16}{'SIZE':<10}MODIFIED")
    for model in models:
        print(
            f"{model['name']:<24}{model['digest'][:12]:<16}"
            f"{_human_size(int(model['size'])):<10}{model['modified_at']}"
        )
    return 0


def _processor(model: dict[str, Any]) -> str:
    """`ollama ps`'s PROCESSOR column: "100% GPU", "100% CPU" or a split like "48%/52% CPU/GPU"."""
    size, vram = int(model["size"]), int(model.get("size_vram", 0))
    if vram <= 0:
        return "100% CPU"
    if vram >= size:
        return "100% GPU"
    cpu = round(100 * (size - vram) / size)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def _cmd_ps() -> int:
    try:
        with _api("GET", "/api/ps") as resp:
            models = json.loads(resp.read())["models"]
    except OSError:
        return _connect_error()
    print(f"{'NAME':<24}{'ID':<16}{'SIZE':<10}{'PROCESSOR':<12}UNTIL")
    for model in models:
        print(
            f"{model['name']:<24}{model['digest'][:12]:<16}"
            f"{_human_size(int(model['size'])):<10}{_processor(model):<12}{model['expires_at']}"
        )
    return 0


def _cmd_pull(name: str) -> int:
    try:
        resp = _api("POST", "/api/pull", {"model": name}, timeout=600)
    except urllib.error.HTTPError as exc:
        print(f"Error: {json.loads(exc.read() or b'{}').get('error', exc)}", file=sys.stderr)
        return 1
    except OSError:
        return _connect_error()
    with resp:
        for raw in resp:
            line = json.loads(raw)
            if "error" in line:
                print(f"Error: {line['error']}", file=sys.stderr)
                return 1
            print(line["status"])
    return 0


def _cmd_rm(name: str) -> int:
    try:
        with _api("DELETE", "/api/delete", {"model": name}):
            pass
    except urllib.error.HTTPError as exc:
        print(f"Error: {json.loads(exc.read() or b'{}').get('error', exc)}", file=sys.stderr)
        return 1
    except OSError:
        return _connect_error()
    print(f"deleted '{name}'")
    return 0


def _log(message: str) -> None:
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%S.000Z")
    sys.stderr.write(f'time={stamp} level=INFO source=emulator.py msg="{message}"\n')
    sys.stderr.flush()


def _cmd_serve() -> int:
    host, port = parse_ollama_host(os.environ.get("OLLAMA_HOST"))
    models_env = os.environ.get("OLLAMA_MODELS")
    models_dir = Path(models_env) if models_env else Path.home() / ".ollama" / "models"
    blobs = models_dir / "blobs"
    try:
        blobs.mkdir(parents=True, exist_ok=True)
        probe = blobs / ".emulator-write-test"
        probe.write_text("")
        probe.unlink()
    except OSError as exc:
        # Real Ollama stops the same way when OLLAMA_MODELS is not writable by its user.
        print(
            f"Error: mkdir {blobs}: {exc.strerror.lower() if exc.strerror else exc}",
            file=sys.stderr,
        )
        return 1
    registry_extra = [n for n in os.environ.get("OLLAMA_EMULATOR_REGISTRY", "").split(",") if n]
    emulator = OllamaEmulator(
        models=(),
        version=EMULATOR_VERSION,
        host=host,
        port=port,
        models_dir=models_dir,
        log_requests=True,
    )
    for name in registry_extra:
        emulator.add_to_registry(name)
    delay = os.environ.get("OLLAMA_EMULATOR_PULL_STEP_SECONDS")
    if delay:
        emulator.pull_step_seconds = float(delay)

    def _terminate(signum: int, frame: object) -> None:
        _log(f"received signal {signum}, shutting down")
        # shutdown() blocks until serve_forever returns, so it must run in another thread.
        if emulator._server is not None:
            threading.Thread(target=emulator._server.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, _terminate)
    signal.signal(signal.SIGINT, _terminate)
    _log("Ollama API emulator: a TEST DOUBLE, no model runs here")
    _log(f"server config env=map[OLLAMA_HOST:{host}:{port} OLLAMA_MODELS:{models_dir}]")
    _log(f"total models {len(emulator.models)}: {' '.join(emulator.models)}")
    try:
        _log(f"Listening on {host}:{port} (version {EMULATOR_VERSION})")
        emulator.serve_forever()
    except OSError as exc:
        print(f"Error: listen tcp {host}:{port}: {exc.strerror or exc}", file=sys.stderr)
        return 1
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="ollama",
        description="Ollama API emulator (TEST DOUBLE): serve, list, ps, pull, rm.",
    )
    parser.add_argument("-v", "--version", action="store_true", help="show version")
    sub = parser.add_subparsers(dest="command")
    sub.add_parser("serve", help="start the emulated server")
    sub.add_parser("list", help="list models")
    sub.add_parser("ps", help="list loaded models")
    pull = sub.add_parser("pull", help="pull a model")
    pull.add_argument("name")
    remove = sub.add_parser("rm", help="remove a model")
    remove.add_argument("name")
    args = parser.parse_args(argv)
    if args.version:
        return _cmd_version()
    if args.command == "serve":
        return _cmd_serve()
    if args.command == "list":
        return _cmd_list()
    if args.command == "ps":
        return _cmd_ps()
    if args.command == "pull":
        return _cmd_pull(args.name)
    if args.command == "rm":
        return _cmd_rm(args.name)
    parser.print_help()
    return 0


if __name__ == "__main__":
    sys.exit(main())
