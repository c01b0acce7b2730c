"""The documents stay honest: links resolve, the layout tree names real paths, and the
commands the README shows exist.

Parsing only, nothing is run: links and anchors in ``README.md`` and ``docs/*.md``, the
code block under the README's ``## Layout`` heading (two spaces of indent per level, one
entry per line), and the ``gradbench``/``make`` commands in code blocks and inline code.
"""

from __future__ import annotations

import ast
import re
import shlex
import unicodedata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = sorted((ROOT / "docs").glob("*.md"))
PAGES = [README, *DOCS]
# Config groups whose options are files in conf/<group>/; a command naming an option must
# name one that exists (hydra/launcher options also come from plugins, so it is left out).
CONF_GROUPS = ("estimator", "objective", "data", "task", "sweep")

LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.S | re.M)
INLINE = re.compile(r"`([^`\n]+)`")


def _ids(paths):
    return [str(p.relative_to(ROOT)) for p in paths]


def _strip_code(text: str) -> str:
    """Markdown without fenced blocks and inline code, where brackets are not links."""
    return INLINE.sub("", FENCE.sub("", text))


def _slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    text = heading.strip().lower().replace("`", "")
    kept = [
        c
        for c in text
        if c in " -_" or unicodedata.category(c)[0] in "LN"  # letters and numbers
    ]
    return "".join(kept).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = FENCE.sub("", path.read_text())
    return {_slug(h) for h in re.findall(r"^#{1,6}\s+(.+?)\s*#*$", text, re.M)}


def links(path: Path) -> list[str]:
    """Relative link targets of a markdown file (web and mail links left out)."""
    targets = LINK.findall(_strip_code(path.read_text()))
    return [t for t in targets if not re.match(r"[a-z][a-z0-9+.-]*:", t)]


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page):
    broken = []
    for target in links(page):
        file, _, anchor = target.partition("#")
        dest = (page.parent / file).resolve() if file else page
        if not dest.exists():
            broken.append(f"{target}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in _anchors(dest):
            broken.append(f"{target}: no heading with that anchor")
    assert not broken, f"{page.name}: " + "; ".join(broken)


def test_docs_pages_exist_and_readme_links_them():
    names = {p.name for p in DOCS}
    for page in ("estimators", "models", "records", "reports", "sweeps", "speed", "testing"):
        assert f"{page}.md" in names
        assert f"docs/{page}.md" in links(README)


def layout_tree(readme: str | None = None) -> list[str]:
    """Paths named by the code block under the README's ``## Layout`` heading."""
    section = (README.read_text() if readme is None else readme).split("\n## Layout", 1)[1]
    block = FENCE.search(section).group(1)
    paths, stack = [], []
    for line in block.splitlines():
        if not line.strip():
            continue
        indent = len(line) - len(line.lstrip(" "))
        assert indent % 2 == 0, f"layout tree: odd indent in {line!r}"
        depth = indent // 2
        assert depth <= len(stack), f"layout tree: {line!r} is indented below no folder"
        name = line.split()[0]
        del stack[depth:]
        paths.append("".join(stack) + name)
        if name.endswith("/"):
            stack.append(name)
    return paths


def test_layout_tree_parses():
    paths = layout_tree()
    assert "estimators/base.py" in paths and "benchmarks/run.py" in paths
    assert len(paths) == len(set(paths)), "layout tree: an entry is listed twice"


@pytest.mark.parametrize("path", layout_tree())
def test_layout_tree_path_exists(path):
    target = ROOT / path
    assert target.exists(), f"README layout names {path}, which does not exist"
    assert target.is_dir() == path.endswith("/"), f"{path}: folders end in /, files do not"


def _code_lines(text: str) -> list[tuple[str, bool]]:
    """Commands in fenced blocks (continuations joined, comments and ``$`` prompts dropped)
    and in inline code spans, each with whether it is shown failing: a transcript line
    followed by ``gradbench: error`` demonstrates bad input on purpose."""
    lines = []
    for block in FENCE.findall(text):
        rows = block.replace("\\\n", " ").splitlines()
        for i, row in enumerate(rows):
            line = re.sub(r"^\$\s+", "", row.split("  #")[0]).strip()
            shown_failing = i + 1 < len(rows) and rows[i + 1].startswith("gradbench: error")
            if line:
                lines.append((line, shown_failing))
    # A bare name in prose (`make`, `gradbench`) names the program, not a command.
    lines += [(c, False) for c in INLINE.findall(FENCE.sub("", text)) if " " in c.strip()]
    return lines


def commands(path: Path, program: str, with_failing: bool = True) -> list[list[str]]:
    """Every ``program ...`` command in a page, as words after the program's name; leading
    ``VAR=value`` words, a ``.venv/bin/`` prefix and ``&&`` chains are handled.
    ``with_failing=False`` leaves out commands shown failing on purpose."""
    found = []
    for line, shown_failing in _code_lines(path.read_text()):
        if shown_failing and not with_failing:
            continue
        for part in line.split("&&"):
            try:
                words = shlex.split(part)
            except ValueError:
                words = part.split()
            while words and re.match(r"[A-Z_][A-Z0-9_]*=", words[0]):
                words = words[1:]
            if words and words[0].removeprefix(".venv/bin/") == program:
                found.append(words[1:])
    return found


def make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    return set(re.findall(r"^([A-Za-z0-9][\w.-]*)\s*:(?!=)", text, re.M))


def gradbench_subcommands() -> set[str]:
    """The subcommands ``benchmarks/cli.py`` registers with ``add_parser("name", ...)``."""
    tree = ast.parse((ROOT / "benchmarks" / "cli.py").read_text())
    names = {
        node.args[0].value
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "add_parser"
        and node.args
        and isinstance(node.args[0], ast.Constant)
    }
    assert {"run", "report", "list"} <= names, f"cli.py registers {sorted(names)}"
    return names


def test_readme_shows_commands():
    assert len(commands(README, "gradbench")) >= 5
    assert len(commands(README, "make")) >= 5


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_make_commands_are_targets(page):
    targets = make_targets()
    assert {"setup", "demo", "test"} <= targets
    for words in commands(page, "make"):
        named = [w for w in words if not w.startswith("-") and "=" not in w]
        assert named, f"{page.name}: `make` without a target"
        unknown = [w for w in named if w not in targets]
        assert not unknown, f"{page.name}: make {' '.join(words)}: no target {unknown}"


def unknown_options(words: list[str]) -> list[str]:
    """``group=a,b`` words naming a config option with no file in ``conf/<group>/``
    (upper-case placeholders such as ``+sweep=NAME`` are left alone)."""
    unknown = []
    for word in words:
        key, sep, values = word.removeprefix("+").partition("=")
        if not sep or key not in CONF_GROUPS or not re.fullmatch(r"[\w,]+", values):
            continue
        if values.isupper():
            continue
        unknown += [
            f"{key}={value}"
            for value in values.split(",")
            if not (ROOT / "conf" / key / f"{value}.yaml").exists()
        ]
    return unknown


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_gradbench_commands_are_subcommands(page):
    subcommands = gradbench_subcommands()
    for words in commands(page, "gradbench"):
        assert words, f"{page.name}: `gradbench` without a subcommand"
        assert words[0] in subcommands, f"{page.name}: gradbench {' '.join(words)}"
    for words in commands(page, "gradbench", with_failing=False):
        if any(w in ("--config-dir", "-cd") or w.startswith("--config-dir=") for w in words):
            continue  # options of the user's own config folder
        unknown = unknown_options(words[1:])
        assert not unknown, f"{page.name}: gradbench {' '.join(words)}: no such {unknown}"


def test_checks_catch_mistakes(tmp_path):
    # Negative control: the parsers see a broken link, a wrong target and a wrong command.
    page = tmp_path / "page.md"
    page.write_text(
        "[gone](nothing.md) [ok](https://example.org) `make nope` and\n"
        "```bash\nmake test\ngradbench frobnicate x=1\nFOO=1 make bench  # timed\n```\n"
        "```\n$ gradbench run estimator=nope\ngradbench: error: unknown estimator\n```\n"
    )
    assert links(page) == ["nothing.md"]
    assert commands(page, "make") == [["test"], ["bench"], ["nope"]]
    assert commands(page, "gradbench") == [["frobnicate", "x=1"], ["run", "estimator=nope"]]
    assert commands(page, "gradbench", with_failing=False) == [["frobnicate", "x=1"]]
    assert "nope" not in make_targets()
    assert "frobnicate" not in gradbench_subcommands()
    assert _slug("task=variance on a `model`") == "taskvariance-on-a-model"
    tree = "\n## Layout\n```\na/   folder\n  b.py   file\n  c/\n    d.py\ne.txt\n```\n"
    assert layout_tree(tree) == ["a/", "a/b.py", "a/c/", "a/c/d.py", "e.txt"]
    assert unknown_options(["estimator=reinforce,nope", "+sweep=NAME", "seed=3"]) == [
        "estimator=nope"
    ]
