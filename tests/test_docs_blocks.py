"""Every fenced python block of README.md and docs/*.md is run by some test, or says why not.

A block counts as run when a test asks for it through ``doc_blocks(page, heading, lang)`` or
``readme_blocks(heading, lang)`` (tests/conftest.py) with arguments this file can read statically:
string literals, module-level string constants, the parameters of a helper called with literals,
a ``for`` loop or ``pytest.mark.parametrize`` over literals. A block that cannot run in the test
suite (real weights, a GPU, detectron2 built from source) carries a marker on the line before its
fence::

    <!-- not-run: needs detectron2 built from source; tests/test_detect_docs.py runs it where it is -->

and is listed in :data:`NOT_RUN` below, so that marking a block is a decision a reviewer sees.
"""
from __future__ import annotations

import ast
import functools
import itertools
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Set, Tuple

from conftest import ROOT, doc_blocks

TESTS = ROOT / "tests"
MARKER = re.compile(r"^\s*<!--\s*not-run:(.*?)-->\s*$")
FENCE = re.compile(r"^```(\S*)")

#: the blocks marked ``<!-- not-run: ... -->``: (page, the section heading they sit under) -> a word the
#: reason must contain. Add an entry here when you mark a block; remove it when a test runs the block.
NOT_RUN: Dict[Tuple[str, str], str] = {
    ("README.md", "Detectron2 / Detic"): "detectron2",
    ("docs/detection.md", "Rescore a Detectron2 detector"): "detectron2",
    ("docs/detection.md", "Rescore Detic"): "Detic",
}


@dataclass
class Block:
    page: str
    line: int            #: 1-based line of the opening fence
    heading: str         #: the nearest heading above it ("" at the top of the page)
    text: str            #: what doc_blocks returns for it
    not_run: Optional[str] = None  #: the marker's reason

    def where(self) -> str:
        return f"{self.page}:{self.line} (section {self.heading!r})"


def pages() -> List[str]:
    return ["README.md"] + sorted(str(p.relative_to(ROOT)) for p in (ROOT / "docs").rglob("*.md"))


def page_blocks(page: str) -> Tuple[List[Block], List[str]]:
    """The python blocks of ``page`` and the problems found reading it (stray markers, ``py`` fences)."""
    lines = (ROOT / page).read_text().splitlines(keepends=True)
    blocks, problems = [], []
    heading, fenced, start, lang, pending = "", False, 0, "", None
    for i, line in enumerate(lines):
        fence = FENCE.match(line)
        if fenced:
            if line.startswith("```"):
                fenced = False
                if lang == "python":
                    blocks.append(Block(page, start + 1, heading, "".join(lines[start + 1:i]), pending))
                pending = None
            continue
        if fence:
            fenced, start, lang = True, i, fence.group(1)
            if lang != "python" and lang.lower().startswith("py") and lang.lower() not in ("pycon",):
                problems.append(f"{page}:{i + 1}: a ```{lang} fence; write ```python so that doc_blocks finds it")
            if pending is not None and lang != "python":
                problems.append(f"{page}:{i + 1}: a not-run marker before a ```{lang} fence (only python blocks "
                                "are run)")
                pending = None
            continue
        marker = MARKER.match(line)
        if marker:
            if pending is not None:
                problems.append(f"{page}:{i + 1}: two not-run markers in a row")
            pending = marker.group(1).strip()
            if not pending:
                problems.append(f"{page}:{i + 1}: a not-run marker without a reason: <!-- not-run: why -->")
                pending = "?"
            continue
        if "not-run" in line and "<!--" in line:
            problems.append(f"{page}:{i + 1}: write the marker alone on its line as <!-- not-run: reason -->")
        if line.strip() and pending is not None:
            problems.append(f"{page}:{i + 1}: a not-run marker that is not right before a ```python fence")
            pending = None
        m = re.match(r"(#+) (.*)", line)
        if m:
            heading = m.group(2).strip()
    return blocks, problems


# ------------------------------------------------------------------------------------------------ tests' calls
def _parents(tree: ast.AST) -> Dict[ast.AST, ast.AST]:
    return {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}


def _enclosing_function(node: ast.AST, parents: Dict[ast.AST, ast.AST]) -> Optional[ast.FunctionDef]:
    while node in parents:
        node = parents[node]
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return node
    return None


def _literals(node: ast.AST) -> Optional[List[object]]:
    """The values of a literal list/tuple of constants (or of tuples of constants), else None."""
    try:
        value = ast.literal_eval(node)
    except ValueError:
        return None
    return list(value) if isinstance(value, (list, tuple)) else None


class Resolver:
    """Read the possible values of an argument expression in one test module, statically."""

    def __init__(self, tree: ast.Module) -> None:
        self.tree = tree
        self.parents = _parents(tree)
        self.constants = {t.id: n.value.value for n in tree.body if isinstance(n, ast.Assign)
                          and isinstance(n.value, ast.Constant) for t in n.targets if isinstance(t, ast.Name)}

    def values(self, expr: Optional[ast.AST], at: ast.AST, default: object = None, depth: int = 0
               ) -> Optional[List[object]]:
        if expr is None:
            return [default]
        if isinstance(expr, ast.Constant):
            return [expr.value]
        if not isinstance(expr, ast.Name) or depth > 4:
            return None
        func = _enclosing_function(at, self.parents)
        if func is not None:
            found = self._in_function(expr.id, func, depth)
            if found is not None:
                return found
        if expr.id in self.constants:
            return [self.constants[expr.id]]
        return None

    def _in_function(self, name: str, func: ast.FunctionDef, depth: int) -> Optional[List[object]]:
        for node in ast.walk(func):  # for name in [literals]:
            if isinstance(node, ast.For) and isinstance(node.target, ast.Name) and node.target.id == name:
                return _literals(node.iter)
        for deco in func.decorator_list:  # @pytest.mark.parametrize("name", [literals])
            if isinstance(deco, ast.Call) and getattr(deco.func, "attr", "") == "parametrize" and deco.args:
                names = ast.literal_eval(deco.args[0]) if isinstance(deco.args[0], ast.Constant) else None
                names = [n.strip() for n in names.split(",")] if isinstance(names, str) else None
                if names and name in names:
                    rows = _literals(deco.args[1]) or []
                    return [row[names.index(name)] if len(names) > 1 else row for row in rows]
        params = [a.arg for a in func.args.args]
        if name not in params:
            return None
        index = params.index(name)
        defaults = dict(zip(params[len(params) - len(func.args.defaults):], func.args.defaults))
        out: List[object] = []
        for call in ast.walk(self.tree):  # a helper: the values its callers pass
            if isinstance(call, ast.Call) and _called_name(call) == func.name:
                arg = next((k.value for k in call.keywords if k.arg == name), None)
                if arg is None and index < len(call.args):
                    arg = call.args[index]
                if arg is None:
                    arg = defaults.get(name)
                    if arg is None:
                        return None
                got = self.values(arg, call, depth=depth + 1)
                if got is None:
                    return None
                out += got
        return out or None


def _called_name(call: ast.Call) -> str:
    f = call.func
    return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else ""


@dataclass
class Request:
    test_file: str
    line: int
    page: str
    heading: Optional[str]


@functools.lru_cache(maxsize=None)
def requests() -> Tuple[List[Request], List[str]]:
    """Every python-block request in tests/*.py (statically resolved) and the calls that could not be read."""
    out, unread = [], []
    for path in sorted(TESTS.glob("*.py")):
        if path.name in ("conftest.py", Path(__file__).name):
            continue
        tree = ast.parse(path.read_text(), str(path))
        resolver = Resolver(tree)
        for call in ast.walk(tree):
            if not isinstance(call, ast.Call) or _called_name(call) not in ("doc_blocks", "readme_blocks"):
                continue
            kw = {k.arg: k.value for k in call.keywords}
            if _called_name(call) == "doc_blocks":
                names, pos = ("page", "heading", "lang"), call.args
            else:
                names, pos = ("heading", "lang"), call.args
            args = {n: (pos[i] if i < len(pos) else kw.get(n)) for i, n in enumerate(names)}
            page = resolver.values(args.get("page"), call) if "page" in args else ["README.md"]
            heading = resolver.values(args["heading"], call)
            lang = resolver.values(args["lang"], call, default="python")
            if page is None or heading is None or lang is None:
                unread.append(f"{path.name}:{call.lineno}")
                continue
            for p, h, lg in itertools.product(page, heading, lang):
                if lg == "python":
                    out.append(Request(path.name, call.lineno, str(p), h))
    return out, unread


@functools.lru_cache(maxsize=None)
def coverage() -> Tuple[List[Block], Dict[Tuple[str, int], Set[str]], List[str]]:
    """All python blocks, which tests ask for each (page, line) -> {test file:line}, and problems."""
    blocks, problems = [], []
    for page in pages():
        b, p = page_blocks(page)
        blocks += b
        problems += p
    by_text: Dict[Tuple[str, str], List[Block]] = {}
    for b in blocks:
        by_text.setdefault((b.page, b.text), []).append(b)
    covered: Dict[Tuple[str, int], Set[str]] = {}
    reqs, _ = requests()
    for r in reqs:
        try:
            texts = doc_blocks(r.page, r.heading, "python")
        except (KeyError, FileNotFoundError) as e:
            problems.append(f"tests/{r.test_file}:{r.line} asks for a section that does not exist: {e}")
            continue
        for text in texts:
            for b in by_text.get((r.page, text), []):
                covered.setdefault((b.page, b.line), set()).add(f"{r.test_file}:{r.line}")
    return blocks, covered, problems


# ------------------------------------------------------------------------------------------------ tests
def test_every_python_block_is_run_by_a_test_or_marked():
    blocks, covered, problems = coverage()
    assert len(blocks) > 20, "found too few python blocks: is the fence pattern right?"
    missing = [b for b in blocks if (b.page, b.line) not in covered and b.not_run is None]
    message = "\n".join(
        [f"{b.where()}: no test runs this python block. Run it in a test (doc_blocks(page, heading) from "
         "tests/conftest.py, then exec it on files the test writes), or, if it cannot run in the test suite, put "
         "<!-- not-run: the reason --> on the line before its fence and list it in NOT_RUN in "
         "tests/test_docs_blocks.py." for b in missing] + problems)
    assert not missing and not problems, message


def test_not_run_blocks_are_listed():
    """The marked blocks, each with its reason (printed with ``pytest -s``), are exactly :data:`NOT_RUN`."""
    blocks, covered, _ = coverage()
    marked = {(b.page, b.heading): b for b in blocks if b.not_run is not None}
    for (page, heading), b in sorted(marked.items()):
        runs = ", ".join(sorted(covered.get((b.page, b.line), ()))) or "no test"
        print(f"not run: {b.where()}: {b.not_run} [asked for by: {runs}]")
    extra = sorted(set(marked) - set(NOT_RUN))
    gone = sorted(set(NOT_RUN) - set(marked))
    assert not extra, (f"blocks marked <!-- not-run --> but not in NOT_RUN (tests/test_docs_blocks.py): {extra}; "
                       "list each there with the reason, so that the decision is reviewed")
    assert not gone, f"NOT_RUN lists blocks that are not marked (or no longer exist): {gone}; remove them"
    for key, word in NOT_RUN.items():
        assert word in marked[key].not_run, f"{marked[key].where()}: the reason should mention {word!r}"


def test_every_test_request_is_readable():
    """A doc_blocks call this file cannot read leaves its blocks looking unrun: name pages and headings with
    literals or module constants (or a helper called with literals)."""
    _, unread = requests()
    assert not unread, f"doc_blocks/readme_blocks calls with arguments not readable statically: {unread}"


# ------------------------------------------------------------------------------------------------ the checker itself
def _write(tmp_path: Path, text: str) -> str:
    (tmp_path / "page.md").write_text(text)
    return str(tmp_path / "page.md")


def test_page_reader_finds_blocks_markers_and_mistakes(tmp_path):
    page = _write(tmp_path, "# T\n\n```python\na = 1\n```\n\n## Two\n<!-- not-run: needs a GPU -->\n```python\n"
                            "b = 2\n```\n\n<!-- not-run: stray -->\ntext\n\n```py\nc = 3\n```\n<!-- not-run: -->\n"
                            "```python\nd = 4\n```\n")
    blocks, problems = page_blocks(page)
    assert [(b.line, b.heading, b.text, b.not_run) for b in blocks] == [
        (3, "T", "a = 1\n", None), (9, "Two", "b = 2\n", "needs a GPU"), (20, "Two", "d = 4\n", "?")]
    assert [p.split(": ", 1)[1] for p in problems] == [
        "a not-run marker that is not right before a ```python fence",
        "a ```py fence; write ```python so that doc_blocks finds it",
        "a not-run marker without a reason: <!-- not-run: why -->"]
    # the page reader and doc_blocks agree on what a block is
    assert [b.text for b in blocks] == doc_blocks(page)


def test_resolver_reads_literals_constants_helpers_loops_and_parametrize():
    tree = ast.parse(
        'PAGE = "docs/x.md"\n'
        'def _run(heading, lang="python"):\n'
        '    return doc_blocks(PAGE, heading, lang)\n'
        'def test_a():\n'
        '    _run("One")\n'
        '    _run(heading="Two")\n'
        'def test_b():\n'
        '    for h in ["Three", "Four"]:\n'
        '        doc_blocks("docs/y.md", h)\n'
        '@pytest.mark.parametrize("h", ["Five"])\n'
        'def test_c(h):\n'
        '    readme_blocks(h, lang="bash")\n'
        'def test_d(tmp_path):\n'
        '    doc_blocks(str(tmp_path))\n')
    r = Resolver(tree)
    calls = sorted((c for c in ast.walk(tree) if isinstance(c, ast.Call) and _called_name(c) in ("doc_blocks", "readme_blocks")),
                   key=lambda c: c.lineno)
    run_call, loop_call, param_call, opaque = calls
    assert r.values(run_call.args[0], run_call) == ["docs/x.md"]
    assert r.values(run_call.args[1], run_call) == ["One", "Two"]
    assert r.values(run_call.args[2], run_call) == ["python", "python"]
    assert r.values(loop_call.args[1], loop_call) == ["Three", "Four"]
    assert r.values(param_call.args[0], param_call) == ["Five"]
    assert r.values(opaque.args[0], opaque) is None
