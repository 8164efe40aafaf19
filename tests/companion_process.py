"""Starting and stopping a real companion server process for tests and benchmarks."""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests

DEVICE = "chi-eclipse-01"
OTHER_DEVICE = "chi-eclipse-02"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    return json.dumps(str(value))


def write_config(path: Path, sections: dict[str, dict[str, Any]]) -> None:
    lines: list[str] = []
    for name, values in sections.items():
        lines.append(f"[{name}]")
        lines.extend(f"{k} = {_toml_value(v)}" for k, v in values.items())
        lines.append("")
    path.write_text("\n".join(lines))


@dataclass
class Companion:
    """A companion server running as a subprocess on 127.0.0.1."""

    base_dir: Path
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    other_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    operator_key: str = field(default_factory=lambda: secrets.token_urlsafe(32))
    device: str = DEVICE
    other_device: str = OTHER_DEVICE
    proc: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    def __post_init__(self) -> None:
        self.data_dir = self.base_dir / "data"
        self.config_path = self.base_dir / "companion.toml"
        sections: dict[str, dict[str, Any]] = {
            "server": {
                "host": "127.0.0.1",
                "port": self.port,
                "data_dir": str(self.data_dir),
                "threads": 8,
                # Tests send many requests at once from 127.0.0.1; the production limit (8)
                # is tested in test_slow_clients.py.
                "max_connections_per_source": 64,
            },
            "operator": {"api_key": self.operator_key},
            "ollama": {"url": "http://127.0.0.1:9"},  # discard port: nothing answers
            "analysis": {"auto": False},
            f"devices.{self.device}": {"api_key": self.key},
            f"devices.{self.other_device}": {"api_key": self.other_key},
        }
        for name, values in self.overrides.items():
            sections.setdefault(name, {}).update(values)
        write_config(self.config_path, sections)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, wait: float = 20.0) -> Companion:
        self.log_path = self.base_dir / "server.log"
        log = open(self.log_path, "ab")  # noqa: SIM115 - the child owns it
        env = dict(os.environ, PYTHONUNBUFFERED="1")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "chi_companion", "serve", "--config", str(self.config_path)],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"companion exited with {self.proc.returncode}:\n{self.log()}")
            try:
                requests.get(f"{self.url}/api/v1/health", timeout=1)
            except requests.RequestException:
                time.sleep(0.05)
            else:
                return self  # any HTTP answer: the server is up
        raise RuntimeError(f"companion did not answer within {wait}s:\n{self.log()}")

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path else ""

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return self.proc.returncode if self.proc else None
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait(5)

    def kill9(self) -> None:
        """Kill the whole process group (master and worker) at once, as a crash would."""
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(10)

    def restart(self) -> Companion:
        self.stop()
        return self.start()

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        key: str | bool | None = True,
        headers: dict[str, str] | None = None,
        raw: bytes | None = None,
        timeout: float = 30.0,
    ) -> tuple[int, dict[str, str], Any]:
        """One HTTP request; returns (status, headers, parsed JSON or raw bytes)."""
        all_headers = {"Connection": "close"}
        if key is True:
            all_headers["X-API-Key"] = self.key
        elif isinstance(key, str):
            all_headers["X-API-Key"] = key
        data = raw
        if body is not None:
            data = json.dumps(body).encode()
            all_headers["Content-Type"] = "application/json"
        all_headers.update(headers or {})
        with requests.Session() as session:
            prepared = session.prepare_request(
                requests.Request(method, self.url + path, data=data, headers=all_headers)
            )
            # Sent as written: requests would remove "." and ".." segments, which tests of
            # path traversal send on purpose.
            prepared.url = self.url + path
            # No redirects followed: the Pi treats them as failures, so a test must see them.
            resp = session.send(prepared, timeout=timeout, allow_redirects=False)
        status, resp_headers, payload = resp.status_code, dict(resp.headers), resp.content
        if resp_headers.get("Content-Type", "").startswith("application/json"):
            return status, resp_headers, json.loads(payload)
        return status, resp_headers, payload


def exchange(comp: Companion, data: bytes, timeout: float = 15.0, pause_after: float = 0) -> bytes:
    """Send raw bytes, then read until the server closes (or the timeout)."""
    with socket.create_connection(("127.0.0.1", comp.port), timeout=timeout) as sock:
        sock.sendall(data)
        if pause_after:
            time.sleep(pause_after)
        chunks = []
        try:
            while chunk := sock.recv(65536):
                chunks.append(chunk)
        except (ConnectionResetError, TimeoutError):
            pass
    return b"".join(chunks)
