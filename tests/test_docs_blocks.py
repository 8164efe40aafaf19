"""Every command block of the setup and troubleshooting guides is run by a test, named in a test
that proves it, or declared manual with the reason; a new block that is none of these fails.

How a block is classified (tests/docblocks.py reads the `<!-- doc-test: KIND -->` marker above
it):

- RUNNERS: the test file that extracts and runs blocks of that kind, so a doc change is tested.
- MANUAL: blocks that need what no test here has (the Pi, the Synology, the GPU, the real
  server and LAN); they are counted apart and never as tested.
- PROVEN: blocks without a marker, each named here with the test that proves what it does.

Also checks the mismatches issue 14 listed, so they cannot come back.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from tests.docblocks import FENCE, GUIDES, Block, guide_blocks

REPO = Path(__file__).resolve().parent.parent

RUNNERS = {
    "companion": "roles/companion/molecule/default/tests/test_docs.py",
    "companion key": "roles/companion/molecule/default/tests/test_docs.py",
    "companion stops": "roles/companion/molecule/default/tests/test_docs.py",
    "companion lan": "roles/companion/molecule/default/tests/test_docs.py",
    "site": "molecule/default/tests/test_site_docs.py",
    "controller": "tests/test_docs_controller.py",
    # The disaster-recovery section's blocks (issue 14 item 4), run by the site scenario.
    "disaster": "molecule/default/tests/test_disaster.py",
    "disaster backup": "molecule/default/tests/test_disaster.py",
}

MANUAL = {
    "manual, pi": "runs on the EclipseTuner Pi (or reaches it over SSH)",
    "manual, nas": "runs on the Synology NAS (DSM), which no test host imitates",
    "manual, gpu": "needs the NVIDIA GPU and its driver",
    "manual, production": "needs the real server's fresh install, RAID, LAN or a stuck run",
    "manual, controller": "installs the controller's packages or checks out a release tag",
}

# (guide, first command line) -> "test file::test function" that proves the block.
PROVEN = {
    (
        "docs/setup-guide.md",
        "chi-srv-01# systemctl reboot",
    ): "roles/companion/molecule/default/tests/test_reboot.py::test_service_back_after_reboot",
    # Key rotation through the role: the scenario rotates with a previous_api_key in the
    # inventory, as the guide's steps do, and checks both keys, then the old one refused.
    (
        "docs/setup-guide.md",
        "controller$ chi-companion gen-key",
    ): (
        "roles/companion/molecule/default/tests/test_keys.py"
        "::test_key_rotation_is_a_reload_not_a_restart"
    ),
}

BLOCKS = guide_blocks(REPO)
COMMANDS = [b for b in BLOCKS if b.is_command]


def test_the_parser_sees_every_fence() -> None:
    for doc in GUIDES:
        fences = [line for line in (REPO / doc).read_text().splitlines() if FENCE.match(line)]
        assert len(fences) == 2 * len([b for b in BLOCKS if b.doc == doc]), doc


def test_every_marker_is_known() -> None:
    unknown = [(b.where, b.marker) for b in BLOCKS if b.marker and b.marker not in RUNNERS | MANUAL]
    assert not unknown, f"markers with no runner and no manual reason: {unknown}"


def classify(block: Block) -> str:
    if block.marker in RUNNERS:
        return "run"
    if block.marker in MANUAL:
        return "manual"
    if (block.doc, block.first) in PROVEN:
        return "proven"
    return "unclassified"


def test_every_command_block_is_run_proven_or_manual() -> None:
    missing = [f"{b.where}: {b.first}" for b in COMMANDS if classify(b) == "unclassified"]
    assert not missing, (
        "command blocks that no test runs or names; mark them <!-- doc-test: KIND --> "
        "(see tests/docblocks.py) or add them to PROVEN in tests/test_docs_blocks.py:\n"
        + "\n".join(missing)
    )


@pytest.mark.parametrize("kind", sorted({b.marker for b in BLOCKS if b.marker in RUNNERS}))
def test_each_runner_exists_and_reads_its_marker(kind: str) -> None:
    runner = REPO / RUNNERS[kind]
    assert runner.is_file(), f"blocks marked {kind!r}, but {RUNNERS[kind]} does not exist"
    text = runner.read_text()
    assert "docblocks" in text and f'"{kind}"' in text, f"{RUNNERS[kind]} does not run {kind!r}"


@pytest.mark.parametrize(("where", "proof"), sorted(PROVEN.items()))
def test_each_proven_block_exists_and_its_test_too(where: tuple[str, str], proof: str) -> None:
    matches = [b for b in COMMANDS if (b.doc, b.first) == where]
    assert len(matches) == 1, f"PROVEN names {where}, found {len(matches)} such blocks"
    assert not matches[0].marker, f"{matches[0].where} is marked and listed in PROVEN"
    path, _, function = proof.partition("::")
    assert re.search(rf"^def {function}\(", (REPO / path).read_text(), re.M), proof


# --------------------------------------------------------------- the mismatches of issue 14


def test_the_pi_is_reached_by_its_host_name_never_by_its_device_id() -> None:
    """chi-eclipse-tuner is the Pi's host name, chi-eclipse-01 its device id at the companion."""
    wrong = re.compile(r"@chi-eclipse-01\b|ssh\s+(?:-\w+\s+)*chi-eclipse-01\b")
    bad = [
        f"{b.where}: {line}" for b in COMMANDS for line in b.body.splitlines() if wrong.search(line)
    ]
    assert not bad, bad


def test_the_setup_guide_says_where_the_apps_key_and_server_go() -> None:
    text = (REPO / "docs/setup-guide.md").read_text()
    for needle in ("COMPANION_API_KEY", "pi.companionService.baseUrl", "config.json"):
        assert needle in text, needle


def test_remote_sudo_gets_a_terminal() -> None:
    """`ssh host sudo ...` has no terminal for sudo's password prompt: it needs `ssh -t`."""
    bad = [
        f"{b.where}: {line}"
        for b in COMMANDS
        for line in b.body.splitlines()
        if re.search(r"\bssh (?!-t)[^|;&]*\bsudo -v\b", line)
    ]
    assert not bad, bad


def test_playbook_commands_ask_for_the_vault_password() -> None:
    """Once vault.yml exists, a play without --ask-vault-pass stops: "no vault secrets found"."""
    command = re.compile(r"(?:^|`|controller\$ )(ansible(?:-playbook)? [^`]*)")
    bad = []
    for doc in GUIDES:
        for number, line in enumerate((REPO / doc).read_text().splitlines(), start=1):
            for found in command.findall(line):
                if "--ask-vault-pass" not in found:
                    bad.append(f"{doc}:{number}: {found.strip()}")
    assert not bad, bad


def test_no_key_is_read_from_the_servers_config() -> None:
    """The config may hold only SHA-256 digests of the keys; the guides read keys from the vault."""
    for doc in GUIDES:
        assert "s/^api_key = " not in (REPO / doc).read_text(), doc


def test_variable_names_the_guides_use_exist() -> None:
    texts = "".join((REPO / doc).read_text() for doc in GUIDES)
    vault_example = (REPO / "inventory/production/vault.example.yml").read_text()
    for name in set(re.findall(r"\bvault_companion_\w+", texts)):
        assert name in vault_example, name
    for path in set(re.findall(r"group_vars/[\w/]+\.yml", texts)):
        if "vault.yml" not in path:
            assert (REPO / "inventory/production" / path).is_file(), path


def test_role_variables_the_guides_name_exist() -> None:
    """A variable the guides tell you to set is one the role (or group_vars/all) defines."""
    texts = "".join((REPO / doc).read_text() for doc in GUIDES)
    hosts = (REPO / "inventory/production/hosts.yml").read_text()
    shared = (REPO / "inventory/production/group_vars/all/main.yml").read_text()
    tags = "".join(p.read_text() for p in REPO.glob("roles/*/tasks/*.yml"))
    roles = ("companion", "ollama", "nas_replication", "pi_push", "chi")
    unknown = []
    not_variables = {"chi_companion"}  # the nftables table `inet chi_companion`
    for name in sorted(set(re.findall(rf"\b(?:{'|'.join(roles)})_[a-z0-9_]+", texts))):
        if name in not_variables:
            continue
        role = next(r for r in roles if name.startswith(r + "_"))
        where = shared if role == "chi" else (REPO / f"roles/{role}/defaults/main.yml").read_text()
        if re.search(rf"^{name}:", where, re.M) or f"{name}:" in hosts:
            continue
        if re.search(rf"\b{name}\b", tags) and re.search(
            rf"tags:.*\b{name}\b|- {name}$", tags, re.M
        ):
            continue
        unknown.append(name)
    assert not unknown, f"named in the guides, defined nowhere: {unknown}"
