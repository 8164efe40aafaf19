"""What the pi_push scenario's test modules share: the paths the role installs, the scenario's
hosts, the companion's HTTP API (with `requests`) and small helpers on the pi host."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
from pathlib import Path
from typing import Any

import requests

DEVICE = "chi-eclipse-01"
USER = "pi"
BIN = "/usr/local/bin/chi-companion-push"
CONFIG = "/etc/chi-companion-push.toml"
KEY_FILE = "/etc/chi-companion-push.key"
STATE_DIR = "/var/lib/chi-companion-push"
UNIT = "chi-companion-push"
TIMER = f"{UNIT}.timer"
SERVICE = f"{UNIT}.service"
WIFI_SERVICE = f"{UNIT}-wifi.service"
HOOK = "/etc/NetworkManager/dispatcher.d/90-chi-companion-push"
HOME_CONNECTION = "Home Test WiFi"
DB = "/home/pi/eclipse-obd/data/obd.db"
LOGS = "/home/pi/eclipse-obd/logs"
COMPANION_SERVICE = "chi-companion"
PORT = 8000
EXIT_UNREACHABLE = 3  # push_client.EXIT_UNREACHABLE, documented in `chi-companion-push --help`
SCENARIO_DIR = Path(__file__).resolve().parent.parent
REPO = SCENARIO_DIR.parents[3]
INVENTORY = os.environ["MOLECULE_INVENTORY_FILE"]


def list_backups(base_url: str, key: str, backup_type: str = "database") -> list[dict[str, Any]]:
    resp = requests.get(
        f"{base_url}/api/v1/backups",
        params={"deviceId": DEVICE, "type": backup_type},
        headers={"X-API-Key": key},
        timeout=10,
    )
    assert resp.status_code == 200, resp.text
    return list(resp.json()["backups"])


def unit_props(host: Any, unit: str, *names: str) -> dict[str, str]:
    out = host.check_output(f"systemctl show {unit} " + " ".join(f"-p {n}" for n in names))
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def journal_of(host: Any, invocation_id: str) -> str:
    return host.check_output(
        f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={shlex.quote(invocation_id)}"
    )


def journal_cursor(host: Any) -> str:
    out = host.check_output("journalctl --no-pager --show-cursor -n 0")
    return out.rsplit("-- cursor: ", 1)[1].strip()


def unit_journal_since(host: Any, unit: str, cursor: str) -> str:
    """Everything the unit and systemd about the unit logged after the cursor.

    The journal, not `systemctl show`: a finished transient-like unit that nothing references
    (the WiFi unit) is unloaded at once, and its properties with it.
    """
    return host.check_output(
        f"journalctl --no-pager -o cat -u {shlex.quote(unit)} --after-cursor={shlex.quote(cursor)}"
    )


def sqlite_query(host: Any, db: str, sql: str) -> Any:
    """Run one read-only query on the pi host with its own python3; return the rows."""
    script = (
        "import json, sqlite3, sys; "
        "c = sqlite3.connect(sys.argv[1]); "
        "print(json.dumps(c.execute(sys.argv[2]).fetchall()))"
    )
    args = " ".join(shlex.quote(a) for a in (script, db, sql))
    out = host.check_output(f"runuser -u {USER} -- python3 -c {args}")
    return json.loads(out)


def run_playbook(playbook: Path, *args: str) -> tuple[int, str]:
    """ansible-playbook against the scenario's inventory, limited to the pi host."""
    result = subprocess.run(
        ["ansible-playbook", "--inventory", INVENTORY, "--limit", "pi", str(playbook), *args],
        capture_output=True,
        text=True,
        check=False,
        # Plain text: the recap is parsed (molecule's environment forces colours).
        env={**os.environ, "ANSIBLE_FORCE_COLOR": "0", "ANSIBLE_NOCOLOR": "1"},
        timeout=600,
    )
    return result.returncode, result.stdout + result.stderr
