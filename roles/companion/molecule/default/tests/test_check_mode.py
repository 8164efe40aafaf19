"""`ansible-playbook --check --diff` on the converged host reports nothing to change and no
failure (testinfra, run by `molecule verify`). The scenario's `check` steps cover the rest:
--check on the fresh host (before converge) and on the converged one must not fail."""

from __future__ import annotations

import os
import re
import subprocess
from typing import Any

from scenario import INVENTORY, SCENARIO_DIR

testinfra_hosts = ["ansible://companion"]

ANSI = re.compile(r"\x1b\[[0-9;]*m")


def test_check_diff_on_the_converged_host_changes_nothing(host: Any) -> None:
    result = subprocess.run(
        [
            "ansible-playbook",
            "--inventory",
            INVENTORY,
            str(SCENARIO_DIR / "converge.yml"),
            "--check",
            "--diff",
        ],
        capture_output=True,
        text=True,
        check=False,
        env={**os.environ, "ANSIBLE_NOCOLOR": "1", "ANSIBLE_FORCE_COLOR": "0"},
        timeout=900,
    )
    output = ANSI.sub("", result.stdout + result.stderr)
    assert result.returncode == 0, output[-3000:]
    recap = re.search(
        r"companion\s*:\s*ok=\d+\s+changed=(\d+)\s+unreachable=0\s+failed=(\d+)", output
    )
    assert recap, output[-3000:]
    assert recap.groups() == ("0", "0"), output[-3000:]
