"""companion_state: absent removes what the role installed and keeps the data; a converge
afterwards serves the same data again; companion_purge_data: true deletes the data too
(testinfra, run by `molecule verify`, last: it leaves the host purged).
"""

from __future__ import annotations

import json
from typing import Any

from scenario import CONFIG, DATA_DIR, DEVICE, PORT, SERVICE, USER, VENV, converge, recap

testinfra_hosts = ["ansible://companion"]

INSTALLED = [
    f"/etc/systemd/system/{SERVICE}.service",
    f"/etc/systemd/system/{SERVICE}-firewall.service",
    f"/etc/systemd/system/{SERVICE}-prune.service",
    f"/etc/systemd/system/{SERVICE}-prune.timer",
    f"/etc/systemd/system/{SERVICE}-db-backup.service",
    f"/etc/systemd/system/{SERVICE}-db-backup.timer",
    "/usr/local/bin/chi-companion",
    VENV,
    CONFIG,
]


def apply(extra_vars: str = "{}") -> tuple[int, int]:
    """Converges with these extra vars, which must succeed; returns (changed, failed)."""
    code, output = converge("--extra-vars", extra_vars)
    assert code == 0, output[-3000:]
    return recap(output)


def health(host: Any, key: str) -> dict[str, Any]:
    return json.loads(
        host.check_output(f"curl -sf -H 'X-API-Key: {key}' http://127.0.0.1:{PORT}/api/v1/health")
    )


def test_absent_removes_the_install_and_keeps_the_data(host: Any, vault_key: str) -> None:
    synced_at = health(host, vault_key)["devices"][DEVICE]["lastSyncAt"]
    assert synced_at, "test_companion.py synced rows before this module runs"

    changed, failed = apply('{"companion_state": "absent"}')
    assert changed > 0 and failed == 0

    for path in INSTALLED:
        assert not host.file(path).exists, path
    assert not host.service(SERVICE).is_running
    assert host.run("nft list table inet chi_companion").rc != 0, "the port filter's table stays"
    assert host.run(f"curl -s -m 3 http://127.0.0.1:{PORT}/").rc == 7
    assert host.file(f"{DATA_DIR}/companion.db").is_file
    assert host.user(USER).exists

    # Removing what is already removed changes nothing.
    assert apply('{"companion_state": "absent"}') == (0, 0)

    # Installed again: the same rows are served.
    apply()
    assert health(host, vault_key)["devices"][DEVICE]["lastSyncAt"] == synced_at


def test_purge_deletes_the_data_and_the_user(host: Any) -> None:
    apply('{"companion_state": "absent", "companion_purge_data": true}')
    assert not host.file(DATA_DIR).exists
    assert not host.user(USER).exists
    for path in INSTALLED:
        assert not host.file(path).exists, path
