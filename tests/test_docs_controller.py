"""The controller's command blocks of the setup guide run as written, in a copy of the
repository, without contacting any host.

Blocks marked `<!-- doc-test: controller -->` (tests/docblocks.py) run in the guide's order in
one sandbox: a copy of ansible.cfg, inventory/, playbooks/ and roles/, with this checkout's
.venv on PATH (`chi-companion gen-key`, `ansible-vault`). Each runs under a terminal (a pty),
because that is where the guide's commands ask their passwords: the test answers the vault and
BECOME prompts like an operator and records which were asked.

What is not as written, and why:
- `${EDITOR:-nano}` is an editor script: it leaves inventory files as they are and, for
  `ansible-vault create`, writes the guide's own vault YAML (the ```yaml block after it) with
  two generated keys in place of its placeholders.
- every `ansible` and `ansible-playbook` command gets `--list-hosts`: the production hosts
  (10.27.27.x) must never be contacted from a test. Their real runs are the site scenario's
  converge of the same playbooks.
Then the vault the guide's steps made is read back through the shipped inventory, and every
playbook the guide names passes `--syntax-check` with it.
"""

from __future__ import annotations

import os
import pty
import re
import secrets
import select
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.docblocks import Block, guide_blocks

REPO = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
BLOCKS = [b for b in guide_blocks(REPO) if b.marker == "controller"]
VAULT_PASSWORD = "doc-test-vault-password"
BECOME_PASSWORD = "doc-test-become-password"
# What a prompt ends with -> the answer an operator types.
PROMPTS = {
    "New Vault password: ": VAULT_PASSWORD,
    "Confirm New Vault password: ": VAULT_PASSWORD,
    "Vault password: ": VAULT_PASSWORD,
    "BECOME password: ": BECOME_PASSWORD,
}
ANSIBLE_RUN = re.compile(r"^(ansible(?:-playbook)? .*)$", re.M)
PLAYBOOK = re.compile(r"\bplaybooks/[\w.-]+\.yml")

pytestmark = pytest.mark.skipif(
    not (BIN / "ansible-playbook").exists(), reason="needs the dev venv (make venv)"
)


def vault_yaml(repo: Path) -> str:
    """The guide's vault content: the yaml block that follows `ansible-vault create`."""
    blocks = guide_blocks(repo)
    for i, block in enumerate(blocks):
        if "ansible-vault create" in block.body:
            following = blocks[i + 1]
            assert following.lang == "yaml", following.where
            return following.body
    raise AssertionError("no block runs ansible-vault create")


@pytest.fixture(scope="module")
def sandbox(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("controller")
    checkout = root / "chi-companion"
    checkout.mkdir()
    shutil.copy(REPO / "ansible.cfg", checkout)
    ignore = shutil.ignore_patterns("molecule", "__pycache__", "vault.yml")
    for part in ("inventory", "playbooks", "roles"):
        shutil.copytree(REPO / part, checkout / part, ignore=ignore)
    keys = [secrets.token_urlsafe(32), secrets.token_urlsafe(32)]
    content = vault_yaml(REPO).replace("<the first key>", keys[0])
    content = re.sub(r'"<the second key[^\n]*"', f'"{keys[1]}"', content)
    (root / "vault-content.yml").write_text(content)
    editor = root / "editor"
    # ansible-vault create opens an empty temporary file; anything else is left as it is.
    editor.write_text(
        f'#!/bin/sh\n[ -s "$1" ] && exit 0\ncat {root / "vault-content.yml"} > "$1"\n'
    )
    editor.chmod(0o755)
    (root / "home").mkdir()
    return checkout


def environment(checkout: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("ANSIBLE_", "MOLECULE_"))}
    env.update(
        PATH=f"{BIN}:/usr/local/bin:/usr/bin:/bin",
        HOME=str(checkout.parent / "home"),
        EDITOR=str(checkout.parent / "editor"),
        ANSIBLE_NOCOLOR="1",
        ANSIBLE_LOCAL_TEMP=str(checkout.parent / "home" / "tmp"),
    )
    return env


def under_a_terminal(script: str, cwd: Path, timeout: float = 300) -> tuple[int, str, list[str]]:
    """Runs `bash -e -c script` with a pty as its terminal, answering PROMPTS. Returns the exit
    code, everything the terminal showed, and the prompts answered, in order."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: its controlling terminal is the pty
        try:
            os.chdir(cwd)
            os.execve("/bin/bash", ["bash", "-eo", "pipefail", "-c", script], environment(cwd))
        finally:
            os._exit(127)
    output, answered, pending = b"", [], b""
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            ready, _, _ = select.select([fd], [], [], 0.5)
            if not ready:
                continue
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            output += chunk
            pending += chunk
            for prompt, answer in PROMPTS.items():
                if pending.rstrip(b" ").endswith(prompt.rstrip().encode()):
                    os.write(fd, answer.encode() + b"\n")
                    answered.append(prompt.strip())
                    pending = b""
                    break
        else:
            os.kill(pid, signal.SIGKILL)
    finally:
        _, status = os.waitpid(pid, 0)
        os.close(fd)
    return os.waitstatus_to_exitcode(status), output.decode(errors="replace"), answered


def as_tested(block: Block) -> str:
    """The block's commands, every ansible run turned into --list-hosts (nothing connects)."""
    return ANSIBLE_RUN.sub(r"\1 --list-hosts", block.script())


def test_the_guide_marks_controller_blocks() -> None:
    assert len(BLOCKS) >= 5, [b.where for b in BLOCKS]
    assert any("ansible-vault create" in b.body for b in BLOCKS)


def run_block(sandbox: Path, block: Block) -> None:
    script = as_tested(block)
    assert "10.27.27." not in script, "a controller block that names a production address"
    code, shown, answered = under_a_terminal(script, sandbox)
    assert code == 0, f"{block.where}:\n{script}\n--- terminal\n{shown[-4000:]}"
    assert "ERROR" not in shown and "Traceback" not in shown, f"{block.where}:\n{shown[-4000:]}"
    for run in ANSIBLE_RUN.findall(block.script()):
        # The guide says: every run asks the vault password, and -K the sudo one first.
        # (ansible-playbook --list-hosts asks only the vault's: it would not use sudo.)
        if "--ask-vault-pass" in run:
            assert "Vault password:" in answered, (block.where, run, answered)
        if " -K" in run and run.startswith("ansible "):
            # In the order setup guide step 2 names them.
            assert answered[:2] == ["BECOME password:", "Vault password:"], (run, answered)
    if "ansible-vault create" in block.body:
        vault = sandbox / "inventory/production/group_vars/all/vault.yml"
        assert vault.read_text().startswith("$ANSIBLE_VAULT;"), "the vault is not encrypted"


@pytest.mark.slow(60)
def test_the_controller_blocks_run_in_the_guides_order(sandbox: Path) -> None:
    """One test, because the blocks build on each other (step 4's vault is step 5's)."""
    for block in BLOCKS:
        run_block(sandbox, block)
    # What step 4 wrote is what the roles read: the device key reaches the inventory.
    code, shown, _ = under_a_terminal(
        "ansible-inventory --ask-vault-pass --host chi-srv-01 --yaml", sandbox
    )
    assert code == 0, shown
    key = re.search(r"vault_companion_device_keys:\s*\n\s*chi-eclipse-01: (\S+)", shown)
    assert key and len(key.group(1).strip("'\"")) >= 32, shown[-3000:]


@pytest.mark.parametrize(
    "playbook",
    sorted({p for b in guide_blocks(REPO) for p in PLAYBOOK.findall(b.body)}),
)
def test_every_playbook_the_guide_names_passes_syntax_check(sandbox: Path, playbook: str) -> None:
    result = subprocess.run(
        [str(BIN / "ansible-playbook"), "--syntax-check", playbook],
        cwd=sandbox,
        env=environment(sandbox),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
