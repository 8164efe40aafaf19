"""The service comes back by itself after the host reboots.

A module of its own so that it runs after test_companion.py (pytest takes files in name
order): it must see everything else already in place, including the rows synced there.
"""

from __future__ import annotations

import contextlib
import time
from typing import Any

from scenario import DEVICE, PORT, SERVICE, console_tail, http

testinfra_hosts = ["ansible://companion"]

REBOOT_DEADLINE_SECONDS = 180


def _boot_id(host: Any) -> str | None:
    """The guest's boot id, or None while it cannot be reached (it is rebooting)."""
    try:
        result = host.run("cat /proc/sys/kernel/random/boot_id")
    except RuntimeError:
        return None
    return result.stdout.strip() if result.rc == 0 else None


def test_service_back_after_reboot(host: Any, outsider: Any, address: str, vault_key: str) -> None:
    boot_before = _boot_id(host)
    assert boot_before
    # Scheduled by the guest's systemd so that this command returns before the connection
    # drops: a plain `systemctl reboot` over SSH may hang until the new boot resets it.
    host.run_expect(
        [0], "systemd-run --on-active=2 --timer-property=AccuracySec=100ms systemctl reboot"
    )
    # The reboot is recognised by a new boot id, not by watching the port close: a reboot takes
    # 2-4 s here, and a poll that misses the moment the port is closed would wait forever.
    started = time.monotonic()
    boot_after = None
    status = None
    while time.monotonic() - started < REBOOT_DEADLINE_SECONDS:
        boot_after = _boot_id(host)
        if boot_after is not None and boot_after != boot_before:
            with contextlib.suppress(OSError):
                status, _ = http("GET", f"http://{address}:{PORT}/api/v1/health", timeout=3)
            if status == 200:
                break
        time.sleep(1)
    took = time.monotonic() - started
    assert boot_after is not None, (
        f"the host was unreachable {took:.0f} s after the reboot\n{console_tail('companion')}"
    )
    assert boot_after != boot_before, (
        f"the host did not reboot within {took:.0f} s\n{console_tail('companion')}"
    )
    assert status == 200, (
        f"the host rebooted but health did not answer within {took:.0f} s "
        f"(last status {status})\n{console_tail('companion')}"
    )
    assert host.service(SERVICE).is_running
    assert host.service(f"{SERVICE}-firewall").is_running
    # The port filter came back with the boot too.
    refused = outsider.run(f"curl -sS -m 5 -o /dev/null http://companion:{PORT}/api/v1/health")
    assert refused.rc == 7
    # And nothing synced before the reboot was lost (test_companion.py stored two rows).
    status, report = http(
        "GET", f"http://{address}:{PORT}/api/v1/sync/status?deviceId={DEVICE}", vault_key
    )
    assert status == 200, report
    assert report["tables"]["realtime_data"]["rows"] == 2
