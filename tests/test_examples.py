"""Every shell example in README.md and docs/ runs as written, and shows what ptm prints.

A ```sh block is a list of commands: each must exit 0. A ```console block
gives commands after `$ ` and what they print after each (stdout and stderr,
as a terminal shows them): the output must match, where `...` within a line
stands for any text and a line of just `...` for any number of lines. Those
are the parts real weights decide (labels, scores, boxes), which the suite's
seeded stand-ins cannot give (tests/docs_sandbox.py). A block that cannot run
here is preceded by `<!-- not run: REASON -->`, and a reason is required.

Each page's blocks run in order, in a fresh copy of the sandbox's files, so a
page may build on its own earlier examples (`ptm embed -o` before `ptm similar`).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import docs_sandbox
import pytest
from helpers import ROOT

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]
FENCE = re.compile(r"^```(\w*)\n(.*?)^```\n", re.MULTILINE | re.DOTALL)
SKIP = re.compile(r"<!-- not run: (.*?) -->\n+$")
SHELLS = ("sh", "console")


@dataclass
class Example:
    page: str
    line: int  # of the command, 1-based
    command: str
    expected: list[str] | None  # None: only the exit status is checked


@dataclass
class Block:
    page: str
    line: int
    language: str
    text: str
    skipped: str | None


def blocks(page: Path) -> Iterator[Block]:
    text = page.read_text(encoding="utf-8")
    for found in FENCE.finditer(text):
        before = text[: found.start()]
        skipped = SKIP.search(before)
        yield Block(
            str(page.relative_to(ROOT)),
            before.count("\n") + 2,  # the block's first line
            found[1],
            found[2],
            skipped[1].strip() if skipped else None,
        )


def commands(block: Block) -> list[Example]:
    """The commands of a block, continuation lines joined, with what each should print."""
    found: list[Example] = []
    lines = block.text.splitlines()
    index = 0
    while index < len(lines):
        line, number = lines[index], block.line + index
        index += 1
        if block.language == "console" and not line.startswith("$ "):
            assert found, f"{block.page}:{number}: a console block starts with `$ `"
            assert found[-1].expected is not None
            found[-1].expected.append(line)
            continue
        command = line[2:] if block.language == "console" else line
        while command.endswith("\\") and index < len(lines):
            command = command[:-1] + "\n" + lines[index]
            index += 1
        if command.strip() and not command.lstrip().startswith("#"):
            found.append(Example(block.page, number, command, [] if block.language == "console" else None))
    return found


def matches(expected: list[str], output: str) -> bool:
    pattern = "".join(
        r"(?:[^\n]*\n)*?" if line.strip() == "..." else re.escape(line.rstrip()).replace(r"\.\.\.", r"[^\n]*") + r"\n"
        for line in expected
    )
    actual = "".join(line.rstrip() + "\n" for line in output.splitlines())
    return re.fullmatch(pattern, actual) is not None


def runnable(page: Path) -> list[Example]:
    return [
        example
        for block in blocks(page)
        if block.language in SHELLS and not block.skipped
        for example in commands(block)
    ]


SHELL_PAGES = [page for page in PAGES if any(block.language in SHELLS for block in blocks(page))]


def test_every_shell_example_is_marked() -> None:
    """Shell examples are ```sh or ```console blocks, so none escapes this test as a plain block."""
    for page in PAGES:
        for block in blocks(page):
            first = block.text.lstrip().split("\n", 1)[0]
            if block.language == "":
                assert not first.startswith(("$ ", "ptm ", "make ")) or "[OPTIONS]" in first, (
                    f"{block.page}:{block.line}: a shell example in a plain block; mark it ```sh or ```console"
                )
            if block.skipped is not None:
                assert len(block.skipped) > 10, f"{block.page}:{block.line}: say why the example cannot run here"


def test_the_matching_rules() -> None:
    assert matches(["a ... b", "..."], "a 1 2 b\nmore\nlines\n")
    assert matches(["x", "...", "z"], "x\nz\n")
    assert not matches(["x", "z"], "x\ny\nz\n")
    assert not matches(["a ... b"], "a 1 c\n")


# Pages whose examples change the weights cache (`ptm weights rm`, `import`, `prune`): each gets a
# cache of its own, and so a warm server of its own. The others share one cache and one server, so
# that a model loads once for all of them.
OWN_CACHE = {"docs/commands/weights.md", "docs/offline.md"}


@dataclass
class Sandbox:
    root: Path
    runtime: Path  # short: a Unix socket's path has a length limit


def stop_server(sandbox: Sandbox, *, remove: bool = True) -> None:
    env = docs_sandbox.environment(sandbox.root, sandbox.runtime)
    subprocess.run(["ptm", "serve", "stop"], cwd=sandbox.root, env=env, capture_output=True, timeout=60, check=False)
    if remove:
        shutil.rmtree(sandbox.runtime, ignore_errors=True)


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Sandbox]:
    sandbox = Sandbox(tmp_path_factory.mktemp("docs"), Path(tempfile.mkdtemp(prefix="ptm-docs-")))
    docs_sandbox.build(sandbox.root)
    try:
        yield sandbox
    finally:
        stop_server(sandbox)


@pytest.mark.parametrize("page", SHELL_PAGES, ids=[str(p.relative_to(ROOT)) for p in SHELL_PAGES])
def test_the_pages_examples_run(page: Path, shared: Sandbox, tmp_path: Path) -> None:
    examples = runnable(page)
    if not examples:
        pytest.skip("every example on this page is marked not runnable, with its reason")
    # The page's own copy of the files: examples write, replace and delete them.
    own = str(page.relative_to(ROOT)) in OWN_CACHE
    if own:
        sandbox = Sandbox(tmp_path / "sandbox", Path(tempfile.mkdtemp(prefix="ptm-docs-")))
        shutil.copytree(shared.root, sandbox.root, symlinks=True, copy_function=os.link)
        work = sandbox.root / "work"
    else:
        sandbox = shared
        work = tmp_path / "work"
        shutil.copytree(shared.root / "work", work, symlinks=True, copy_function=os.link)
    # One home for the pages that share a server: $HOME can change results (torch's folders are in it),
    # so a server refuses a client with another. Nothing the examples run writes there.
    env = docs_sandbox.environment(sandbox.root, sandbox.runtime)
    try:
        for example in examples:
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", example.command],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=180,
                check=False,
            )
            where = f"{example.page}:{example.line}: `{example.command}`"
            if example.expected is None:
                assert done.returncode == 0, f"{where} exited {done.returncode}:\n{done.stdout}"
            else:
                assert done.returncode == 0 or re.search(r"echo .*\$\?", example.command), (
                    f"{where} exited {done.returncode}:\n{done.stdout}"
                )
                assert matches(example.expected, done.stdout), (
                    f"{where} printed:\n{done.stdout}\nwhere the page shows:\n" + "\n".join(example.expected)
                )
    finally:
        if own:
            stop_server(sandbox)
        elif any(re.search(r"\bPTM_[A-Z_]+=", example.command) for example in examples):
            # A command with a variable of its own (PTM_CATALOG=... ptm ...) may have started the server
            # with it, and the next page's calls would not use that one.
            stop_server(sandbox, remove=False)
