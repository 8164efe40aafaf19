"""What the companion scenario's test modules share: the role's paths, the scenario's hosts,
a small HTTP helper (requests, from requirements-dev.txt) and the one way tests run the
scenario's converge playbook again."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path
from typing import Any

import requests
import yaml

SERVICE = "chi-companion"
USER = "chi-companion"
DATA_DIR = "/mnt/raid5/chi-companion"
CONFIG = "/etc/chi-companion/companion.toml"
VENV = "/opt/chi-companion/venv"
PORT = 8000
DEVICE = "chi-eclipse-01"
SCENARIO_DIR = Path(__file__).resolve().parent.parent
REPO = SCENARIO_DIR.parents[3]
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]
ANSI = re.compile(r"\x1b\[[0-9;]*m")
RECAP = re.compile(r"companion\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)")


def converge(*args: str, timeout: int = 900) -> tuple[int, str]:
    """Runs the scenario's converge.yml again with extra ansible-playbook arguments (--check,
    --tags, --extra-vars ...); returns its exit code and its output without colours."""
    result = subprocess.run(
        ["ansible-playbook", "--inventory", INVENTORY, str(SCENARIO_DIR / "converge.yml"), *args],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
        timeout=timeout,
    )
    return result.returncode, ANSI.sub("", result.stdout + result.stderr)


def recap(output: str) -> tuple[int, int]:
    """(changed, failed) of the companion host in a play's recap."""
    match = RECAP.search(output)
    assert match, output[-3000:]
    return int(match.group(1)), int(match.group(2))


def http(
    method: str, url: str, key: str | None = None, body: Any = None, timeout: float = 10
) -> tuple[int, Any]:
    headers = {"Content-Type": "application/json"}
    if key is not None:
        headers["X-API-Key"] = key
    data = json.dumps(body).encode() if body is not None else None
    # A refused or timed-out connection raises requests' errors, which are OSErrors.
    resp = requests.request(method, url, data=data, headers=headers, timeout=timeout)
    return resp.status_code, json.loads(resp.content or b"null")


def console_tail(host_name: str, lines: int = 60) -> str:
    """The end of a test host's console (boot messages and the rig launcher's own lines).

    The rig keeps it on this controller (tests/molecule_rig/rig.sh); a failure message that
    carries it says whether the host booted, stopped, or never got its network.
    """
    scenario = yaml.safe_load((SCENARIO_DIR / "molecule.yml").read_text())
    bridge = scenario["provisioner"]["env"]["CHI_RIG_BRIDGE"]
    state_root = Path(os.environ.get("CHI_RIG_STATE_DIR", "/var/lib/chi-molecule"))
    log = state_root / bridge / host_name / "console.log"
    try:
        text = log.read_text(errors="replace")
    except OSError as exc:
        return f"(no console log: {exc})"
    return f"--- last {lines} lines of {log}\n" + "\n".join(text.splitlines()[-lines:])
