"""Every shell example in README.md and docs/ runs as written, and shows what ptm prints.

A ```sh block is a list of commands: each must exit 0. A ```console block
gives commands after `$ ` and what they print after each (stdout and stderr,
as a terminal shows them): the output must match, where `...` within a line
stands for any text and a line of just `...` for any number of lines. Those
are the parts real weights decide (labels, scores, boxes), which the suite's
seeded stand-ins cannot give (tests/docs_sandbox.py). A block that cannot run
here is preceded by `<!-- not run: REASON -->`, and a reason is required.

Each page's blocks run in order, in a fresh copy of the sandbox's files, so a
page may build on its own earlier examples (`ptm embed -o` before `ptm similar`);
pages run three at a time.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
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


def own_sandbox(page: Path) -> bool:
    """Whether a page needs a cache and warm server of its own.

    Its examples change the weights cache (`ptm weights rm`, `import`, `prune`), stop the server
    (`ptm serve stop`), or set a variable of their own (`PTM_CATALOG=... ptm ...`), with which a
    server they start would turn the other pages' calls away. The other pages share one cache and
    one server, so that a model loads once for all of them.
    """
    commands = "\n".join(example.command for example in runnable(page))
    return bool(re.search(r"ptm weights (rm|import|prune)|ptm serve stop|\bPTM_[A-Z_]+=", commands))


@dataclass
class Sandbox:
    root: Path
    runtime: Path  # short: a Unix socket's path has a length limit


def stop_server(sandbox: Sandbox) -> None:
    env = docs_sandbox.environment(sandbox.root, sandbox.runtime)
    subprocess.run(["ptm", "serve", "stop"], cwd=sandbox.root, env=env, capture_output=True, timeout=60, check=False)
    shutil.rmtree(sandbox.runtime, ignore_errors=True)


def run_page(page: Path, shared: Sandbox, folder: Path) -> list[str]:
    """Run a page's examples in order; what went wrong, in words (nothing when all is well)."""
    own = own_sandbox(page)
    if own:
        sandbox = Sandbox(folder / "sandbox", Path(tempfile.mkdtemp(prefix="ptm-docs-")))
        shutil.copytree(shared.root, sandbox.root, symlinks=True, copy_function=os.link)
        work = sandbox.root / "work"
    else:  # the page's own copy of the files (examples write, replace and delete them), the shared cache
        sandbox, work = shared, folder / "work"
        shutil.copytree(shared.root / "work", work, symlinks=True, copy_function=os.link)
    env = docs_sandbox.environment(sandbox.root, sandbox.runtime)
    try:
        for example in runnable(page):
            done = subprocess.run(
                ["bash", "-o", "pipefail", "-c", example.command],
                cwd=work,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                timeout=300,
                check=False,
            )
            where = f"{example.page}:{example.line}: `{example.command}`"
            exit_shown = example.expected is not None and re.search(r"echo .*\$\?", example.command)
            if done.returncode != 0 and not exit_shown:
                return [f"{where} exited {done.returncode}:\n{done.stdout}"]
            if example.expected is not None and not matches(example.expected, done.stdout):
                shown = "\n".join(example.expected)
                return [f"{where} printed:\n{done.stdout}\nwhere the page shows:\n{shown}"]
        return []
    finally:
        if own:
            stop_server(sandbox)


@pytest.fixture(scope="module")
def outcomes(docs_files: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[Path, list[str]]]:
    """Every page's examples, run three pages at a time (most of a call is a process starting)."""
    shared = Sandbox(docs_files, Path(tempfile.mkdtemp(prefix="ptm-docs-")))
    pages = [page for page in SHELL_PAGES if runnable(page)]
    try:
        with ThreadPoolExecutor(max_workers=3) as pool:
            futures = {page: pool.submit(run_page, page, shared, tmp_path_factory.mktemp("page")) for page in pages}
            yield {page: future.result() for page, future in futures.items()}
    finally:
        stop_server(shared)


@pytest.mark.parametrize("page", SHELL_PAGES, ids=[str(p.relative_to(ROOT)) for p in SHELL_PAGES])
def test_the_pages_examples_run(page: Path, outcomes: dict[Path, list[str]]) -> None:
    if page not in outcomes:
        pytest.skip("every example on this page is marked not runnable, with its reason")
    assert not outcomes[page], outcomes[page][0]
