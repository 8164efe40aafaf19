"""`ansible-playbook --check --diff` on the converged host reports nothing to change and no
failure (testinfra, run by `molecule verify`). The scenario's `check` steps cover the rest:
--check on the fresh host (before converge) and on the converged one must not fail."""

from __future__ import annotations

from typing import Any

from scenario import converge, recap

testinfra_hosts = ["ansible://companion"]


def test_check_diff_on_the_converged_host_changes_nothing(host: Any) -> None:
    code, output = converge("--check", "--diff")
    assert code == 0, output[-3000:]
    assert recap(output) == (0, 0), output[-3000:]
