#!/usr/bin/env python3
"""Import every module of chi_companion and start the server once: the check `make deps-min`
runs in a venv holding only the lowest dependency versions pyproject.toml allows.

Standard library only (that venv has no pytest). Talks to 127.0.0.1 only. Exit 0 when every
module imports, /health and /ping answer 200 and SIGTERM stops the server with status 0.
"""

from __future__ import annotations

import importlib
import json
import os
import pkgutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def get(url: str, key: str | None = None) -> tuple[int, dict[str, object]]:
    req = urllib.request.Request(url, headers={"X-API-Key": key} if key else {})
    try:
        with urllib.request.urlopen(req, timeout=5) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


def main() -> int:
    import chi_companion

    names = [m.name for m in pkgutil.walk_packages(chi_companion.__path__, "chi_companion.")]
    for name in names:
        if name != "chi_companion.__main__":
            importlib.import_module(name)
    print(f"imported {len(names)} modules")
    with tempfile.TemporaryDirectory() as tmp:
        config = Path(tmp) / "companion.toml"
        port = free_port()
        cli = [sys.executable, "-m", "chi_companion"]
        init = ["init-config", "--out", str(config), "--data-dir", f"{tmp}/data"]
        subprocess.run(
            [*cli, *init, "--port", str(port)],
            check=True,
            capture_output=True,
        )
        key = next(
            line.split('"')[1] for line in config.read_text().splitlines() if "api_key" in line
        )
        env = {**os.environ, "COMPANION_OLLAMA_URL": f"http://127.0.0.1:{free_port()}"}
        server = subprocess.Popen([*cli, "serve", "--config", str(config)], env=env)
        try:
            base = f"http://127.0.0.1:{port}/api/v1"
            deadline = time.monotonic() + 30
            while True:
                try:
                    status, health = get(f"{base}/health")
                    break
                except (ConnectionError, urllib.error.URLError):
                    if time.monotonic() > deadline or server.poll() is not None:
                        print("the server did not start", file=sys.stderr)
                        return 1
                    time.sleep(0.2)
            print(f"/health {status}: {health.get('status')}")
            ping_status, ping = get(f"{base}/ping", key)
            print(f"/ping {ping_status}: {ping.get('status')}")
            if ping_status != 200 or status not in (200, 503):
                return 1
        finally:
            server.send_signal(signal.SIGTERM)
            code = server.wait(timeout=60)
        print(f"server exited with {code} after SIGTERM")
        return 0 if code == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
