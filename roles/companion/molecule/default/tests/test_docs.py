"""The server-side command blocks of the docs run as written on the converged host (testinfra,
run by `molecule verify`).

A fenced block preceded by `<!-- doc-test: companion -->` in docs/setup-guide.md or
docs/troubleshooting.md is executed here, so a doc change is tested. Lines with a prompt
(`chi-srv-01# `, `$ `) are the commands and the others their sample output; a block without
prompts is one script. `<!-- doc-test: companion key -->` marks the block that sets $KEY: it
runs first, in front of every other block, reading the key from its input as the reader pastes
it (the server's config holds only its digest), and the key must be accepted.
"""

from __future__ import annotations

import re
import shlex
from typing import Any

import pytest
from scenario import PORT, REPO

testinfra_hosts = ["ansible://companion"]

DOCS = ("docs/setup-guide.md", "docs/troubleshooting.md")
BLOCK = re.compile(r"<!-- doc-test: companion( key)? -->\n```[a-z]*\n(.*?)\n```", re.S)
PROMPT = re.compile(r"^(?:chi-srv-01# |\$ )")


def script(body: str) -> str:
    lines = body.splitlines()
    if any(PROMPT.match(line) for line in lines):
        lines = [PROMPT.sub("", line) for line in lines if PROMPT.match(line)]
    return "\n".join(lines)


def blocks() -> tuple[str, list[tuple[str, str]]]:
    key_block = ""
    found = []
    for doc in DOCS:
        text = (REPO / doc).read_text()
        for number, match in enumerate(BLOCK.finditer(text), start=1):
            if match.group(1):
                key_block = script(match.group(2))
            else:
                found.append((f"{doc}#{number}", script(match.group(2))))
    return key_block, found


KEY_BLOCK, BLOCKS = blocks()


def run(host: Any, body: str, key: str) -> Any:
    """The key block, then ``body``, in one shell whose input is the key, as pasted."""
    script = shlex.quote(KEY_BLOCK + chr(10) + body)
    return host.run(f"printf '%s\\n' {shlex.quote(key)} | bash -eo pipefail -c {script}")


def test_the_docs_mark_blocks_to_run() -> None:
    assert KEY_BLOCK, "no block marked doc-test: companion key"
    assert len(BLOCKS) >= 4, BLOCKS


def test_the_key_block_reads_an_accepted_key(host: Any, vault_key: str) -> None:
    result = run(
        host,
        'test -n "$KEY"\n'
        f'curl -sf -o /dev/null -H "X-API-Key: $KEY" http://127.0.0.1:{PORT}/api/v1/ping',
        vault_key,
    )
    assert result.rc == 0, (KEY_BLOCK, result.stdout, result.stderr)


@pytest.mark.parametrize(("where", "body"), BLOCKS, ids=[where for where, _ in BLOCKS])
def test_marked_block_runs_as_written(host: Any, where: str, body: str, vault_key: str) -> None:
    result = run(host, body, vault_key)
    assert result.rc == 0, (
        f"{where}:\n{body}\n--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}"
    )
    assert "Traceback" not in result.stderr
