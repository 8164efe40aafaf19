"""The limits an operator tunes through the role reach the running service and the port filter
(testinfra, run by `molecule verify`; name order puts it after test_keys.py, before the reboot).

The scenario's inventory sets non-default values (group_vars/companion_servers.yml):
max_connections_per_source 12 (default 8), header_timeout_seconds 20 (default 10), quotas of
1 GiB synced and 1 MiB of backups, the port filter's per-source cap 6, and /metrics for the
controller only. Each test proves one of them by behaviour, not by reading the file back alone.
"""

from __future__ import annotations

import re
import shlex
import socket
import time
import tomllib
from typing import Any

import requests
from scenario import CONFIG, DEVICE, PORT, VENV, http

testinfra_hosts = ["ansible://companion"]

SERVICE_CAP = 12
FILTER_CAP = 6
HEADER_TIMEOUT = 20
SYNCED_QUOTA = 1073741824
BACKUP_QUOTA = 1048576
TABLE = "inet chi_companion"


def _on_host(host: Any, script: str, timeout: int = 90) -> str:
    """Runs a Python script on the companion host (its own python3) and returns its stdout."""
    return str(host.check_output(f"timeout {timeout} python3 -c {shlex.quote(script)}"))


def test_rendered_config_carries_the_tuned_values(host: Any) -> None:
    config = tomllib.loads(host.file(CONFIG).content_string)
    assert config["server"]["max_connections_per_source"] == SERVICE_CAP
    assert config["server"]["header_timeout_seconds"] == HEADER_TIMEOUT
    assert config["server"]["min_body_bytes_per_second"] == 500
    assert config["server"]["body_grace_seconds"] == 10
    assert config["quotas"] == {
        "synced_bytes_per_device": SYNCED_QUOTA,
        "backup_bytes_per_device": BACKUP_QUOTA,
    }
    assert config["backups"]["keep_within_days"] == 7
    assert config["ollama"]["num_ctx"] == 8192
    assert config["ollama"]["poll_seconds"] == 15
    assert config["analysis"]["device_queue_share"] == 0.5
    assert config["analysis"]["max_inline_body_bytes"] == 1048576
    checked = host.run(f"{VENV}/bin/chi-companion check-config --config {CONFIG}")
    assert checked.rc == 0, checked.stdout + checked.stderr


def test_service_uses_the_quotas(address: str, vault_key: str) -> None:
    base = f"http://{address}:{PORT}/api/v1"
    status, health = http("GET", f"{base}/health", vault_key)
    assert status == 200
    usage = health["components"]["quotas"]["devices"][DEVICE]
    assert usage["syncedQuotaBytes"] == SYNCED_QUOTA
    assert usage["backupQuotaBytes"] == BACKUP_QUOTA
    status, before = http("GET", f"{base}/backups?deviceId={DEVICE}", vault_key)
    assert status == 200
    # Above the 1 MiB quota (the service's default is 100 GiB): refused before it is stored.
    data = b"\0" * (BACKUP_QUOTA * 3 // 2)
    resp = requests.put(
        f"{base}/backups/{DEVICE}/database/over-quota.db.gz",
        data=data,
        headers={"X-API-Key": vault_key, "Content-Type": "application/octet-stream"},
        timeout=60,
    )
    assert resp.status_code == 507, resp.text
    assert resp.json()["quota"]["setting"] == "quotas.backup_bytes_per_device"
    assert resp.json()["quota"]["limitBytes"] == BACKUP_QUOTA
    status, after = http("GET", f"{base}/backups?deviceId={DEVICE}", vault_key)
    assert status == 200
    assert after == before, "a refused upload must leave nothing"


def test_metrics_for_the_allowed_address_only(host: Any, address: str) -> None:
    # This controller is the bridge's .1, the one address in companion_metrics_allowed_addresses.
    resp = requests.get(f"http://{address}:{PORT}/metrics", timeout=10)
    assert resp.status_code == 200, resp.text
    assert resp.headers["Content-Type"].startswith("text/plain")
    assert "# TYPE chi_companion_info gauge" in resp.text
    limit = re.search(
        rf'^chi_quota_limit_bytes\{{[^}}]*device="{DEVICE}"[^}}]*kind="backups"[^}}]*\}} (\S+)$',
        resp.text,
        re.MULTILINE,
    )
    assert limit, resp.text
    assert float(limit.group(1)) == BACKUP_QUOTA
    # The companion host itself is not in the list: over loopback and over its LAN address.
    for source in ("127.0.0.1", address):
        out = host.check_output(f"curl -sS -w '\\n%{{http_code}}' http://{source}:{PORT}/metrics")
        body, code = out.rsplit("\n", 1)
        assert code == "403", f"from {source}: {out}"
        assert '"error"' in body and "# TYPE" not in body


def test_service_caps_connections_per_source_at_the_configured_number(host: Any) -> None:
    # Over loopback (the port filter accepts lo first): the service's own cap, 12, not 8.
    script = f"""
import socket
held = [socket.create_connection(("127.0.0.1", {PORT}), timeout=10) for _ in range({SERVICE_CAP})]
extra = socket.create_connection(("127.0.0.1", {PORT}), timeout=10)
print("extra", extra.recv(200).split(b"\\r\\n")[0].decode())
for s in held:
    s.sendall(b"GET /api/v1/health HTTP/1.1\\r\\nHost: t\\r\\nConnection: close\\r\\n\\r\\n")
    print("held", s.recv(200).split(b"\\r\\n")[0].decode())
    s.close()
"""
    lines = _on_host(host, script).splitlines()
    assert lines[0].startswith("extra HTTP/1.1 429"), lines
    held = [line.split()[2] for line in lines[1:]]
    assert held == ["200"] * SERVICE_CAP, lines


def test_service_waits_the_configured_header_timeout(host: Any) -> None:
    # An idle connection is answered 408 after header_timeout_seconds: 20 here, 10 by default.
    script = f"""
import socket, time
s = socket.create_connection(("127.0.0.1", {PORT}), timeout=60)
start = time.monotonic()
data = b""
while chunk := s.recv(4096):
    data += chunk
print(round(time.monotonic() - start, 1), data.split(b"\\r\\n")[0].decode())
"""
    elapsed, status = _on_host(host, script).split(" ", 1)
    assert status.startswith("HTTP/1.1 408"), status
    assert HEADER_TIMEOUT - 1 <= float(elapsed) <= HEADER_TIMEOUT + 10, elapsed


def _open(address: str) -> socket.socket:
    return socket.create_connection((address, PORT), timeout=5)


def test_port_filter_caps_connections_per_source(host: Any, address: str) -> None:
    """From this controller (an allowed address): FILTER_CAP idle connections open, the next
    one is reset by nftables (the service never sees it: its own cap is 12), loopback on the
    host still works, and the held connections are served and close cleanly."""
    held = [_open(address) for _ in range(FILTER_CAP)]
    try:
        refused_at = time.monotonic()
        try:
            extra = _open(address)
        except ConnectionRefusedError:
            pass
        else:
            extra.close()
            raise AssertionError(f"connection {FILTER_CAP + 1} from one address was accepted")
        # A reset, at once: not a drop the client would wait out.
        assert time.monotonic() - refused_at < 2
        rule = host.check_output(f"nft list table {TABLE}")
        counted = re.search(rf"ct count over {FILTER_CAP} \}} counter packets (\d+)", rule)
        assert counted and int(counted.group(1)) >= 1, rule
        local = host.run(
            f"curl -sS -m 5 -o /dev/null -w '%{{http_code}}' http://127.0.0.1:{PORT}/api/v1/health"
        )
        assert local.stdout == "200", local
        for conn in held:
            conn.sendall(b"GET /api/v1/health HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            reply = b""
            while chunk := conn.recv(4096):
                reply += chunk
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
    finally:
        for conn in held:
            conn.close()
    # Closed connections stop counting: a new one from the same address is accepted again.
    deadline = time.monotonic() + 10
    while True:
        try:
            status, _ = http("GET", f"http://{address}:{PORT}/api/v1/health")
            break
        except requests.ConnectionError:
            assert time.monotonic() < deadline, "still refused after the held connections closed"
            time.sleep(0.5)
    assert status == 200
