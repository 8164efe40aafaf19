"""The daily backup of the companion's own database (testinfra, run by `molecule verify`): the
role's timer, its oneshot service as the service user in the same sandbox as the prune job,
and what one run leaves in db-backups/.
"""

from __future__ import annotations

import re
from typing import Any

from scenario import DATA_DIR, SERVICE, USER

testinfra_hosts = ["ansible://companion"]

UNIT = f"{SERVICE}-db-backup"


def test_database_backup_runs_from_its_daily_timer(host: Any) -> None:
    timer = host.service(f"{UNIT}.timer")
    assert timer.is_enabled and timer.is_running
    timers = host.check_output(f"systemctl show -p TimersCalendar --value {UNIT}.timer")
    assert "02:45:00" in timers, timers
    assert host.check_output(f"systemctl show -p Persistent --value {UNIT}.timer") == "yes"

    host.run_expect([0], f"systemctl start {UNIT}.service")
    props = ("Result", "User", "PrivateNetwork", "ProtectSystem")
    show = dict(
        line.split("=", 1)
        for line in host.check_output(
            f"systemctl show {' '.join('-p ' + p for p in props)} {UNIT}.service"
        ).splitlines()
    )
    assert show == dict(zip(props, ("success", USER, "yes", "strict"), strict=True)), show
    journal = host.check_output(f"journalctl -u {UNIT}.service -o cat --no-pager")
    line = re.search(
        r"^(/\S+/db-backups/companion-\d{8}T\d{6}Z\.db\.gz): .*integrity ok", journal, re.M
    )
    assert line, journal[-2000:]
    copy = host.file(line.group(1))
    assert copy.exists and copy.user == USER and copy.mode == 0o640
    assert copy.path.startswith(f"{DATA_DIR}/db-backups/")
    # A real gzip of a database that passes SQLite's own check (python3 is on every host).
    check = host.run(
        "python3 -c 'import gzip,sqlite3,sys,tempfile;"
        't=tempfile.NamedTemporaryFile(suffix=".db");t.write(gzip.open(sys.argv[1]).read());'
        't.flush();print(sqlite3.connect(t.name).execute("PRAGMA integrity_check").fetchone()[0])\''
        " %s",
        copy.path,
    )
    assert check.rc == 0 and check.stdout.strip() == "ok", check.stderr
