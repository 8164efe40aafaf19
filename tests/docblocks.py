"""The fenced blocks of the user guides, and what each `<!-- doc-test: ... -->` marker means.

One parser for every test that reads the guides: `tests/test_docs_blocks.py` (every command
block is run by a scenario, proven by a named test, or declared manual), the companion and site
scenarios' doc runners and `tests/test_docs_controller.py` (which run the marked blocks). The
scenario tests load this file by path (their own directory is also called `tests`), so it
imports nothing from the repository.

A marker is the HTML comment on the line right above a fence:

    <!-- doc-test: companion -->      run on the companion scenario's converged host
    <!-- doc-test: companion key -->  the block that sets $KEY (read from stdin), run first
    <!-- doc-test: site -->           run on the site scenario's server (Ollama, the NAS copy)
    <!-- doc-test: controller -->     run by pytest in a copy of the repository (nothing is
                                      contacted: every ansible command gets --list-hosts)
    <!-- doc-test: manual, pi -->     not run anywhere: needs the Pi (or nas, gpu, production)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

GUIDES = ("docs/setup-guide.md", "docs/troubleshooting.md")
# Info strings of blocks that are commands; text, yaml, toml, json blocks are output or files.
COMMAND_LANGS = frozenset({"console", "bash", "sh", "shell", ""})
FENCE = re.compile(r"^(?P<indent>[ \t]*)```(?P<lang>[A-Za-z0-9_-]*)[ \t]*$")
MARKER = re.compile(r"^[ \t]*<!-- doc-test: (?P<kind>[a-z, -]+?) -->[ \t]*$")
HEADING = re.compile(r"^#{1,6} (?P<title>.+)$")
# The prompts of a `console` block: the server as root, the controller, or a bare `$ `.
PROMPT = re.compile(r"^(?:chi-srv-01# |controller\$ |\$ )")


@dataclass(frozen=True)
class Block:
    doc: str
    line: int  # 1-based line of the opening fence
    lang: str
    body: str
    marker: str  # "" when the block has none
    heading: str

    @property
    def is_command(self) -> bool:
        return self.lang in COMMAND_LANGS

    @property
    def first(self) -> str:
        """The first command line, the block's name in tables and test ids."""
        for line in self.body.splitlines():
            if line.strip() and not line.startswith("#"):
                return line.strip()
        return self.body.strip().splitlines()[0] if self.body.strip() else ""

    @property
    def where(self) -> str:
        return f"{self.doc}:{self.line}"

    def script(self) -> str:
        """The commands as a script: in a block with prompts only the prompted lines (the
        others are sample output); a block without prompts is one script as it stands."""
        lines = self.body.splitlines()
        if any(PROMPT.match(line) for line in lines):
            lines = [PROMPT.sub("", line) for line in lines if PROMPT.match(line)]
        return "\n".join(lines)


def parse(text: str, doc: str) -> list[Block]:
    blocks: list[Block] = []
    lines = text.splitlines()
    heading = ""
    i = 0
    while i < len(lines):
        line = lines[i]
        fence = FENCE.match(line)
        if fence is None:
            title = HEADING.match(line)
            if title:
                heading = title.group("title")
            i += 1
            continue
        indent = fence.group("indent")
        end = i + 1
        while end < len(lines) and lines[end].rstrip() != f"{indent}```":
            end += 1
        if end == len(lines):
            raise ValueError(f"{doc}:{i + 1}: fence is never closed")
        body = "\n".join(
            raw[len(indent) :] if raw.startswith(indent) else raw for raw in lines[i + 1 : end]
        )
        marker = MARKER.match(lines[i - 1]) if i > 0 else None
        blocks.append(
            Block(
                doc=doc,
                line=i + 1,
                lang=fence.group("lang"),
                body=body,
                marker=marker.group("kind") if marker else "",
                heading=heading,
            )
        )
        i = end + 1
    return blocks


def guide_blocks(repo: Path) -> list[Block]:
    """Every fenced block of the setup and troubleshooting guides, in order."""
    return [block for doc in GUIDES for block in parse((repo / doc).read_text(), doc)]


def marked(repo: Path, kind: str) -> list[Block]:
    return [block for block in guide_blocks(repo) if block.marker == kind]
