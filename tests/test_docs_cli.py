"""docs/cli.md is the real command line: every subcommand and every option of the argparse tree is on
the page, and the generated part equals what docs/_tools/cli_reference.py renders from the parsers."""
from __future__ import annotations

import argparse
import difflib
import importlib.util
import re

from conftest import ROOT

PAGE = ROOT / "docs" / "cli.md"
# The one command that brings the page up to date (run from the repository root, in the venv that has the
# package installed): every failure below names it, so whoever adds a flag fixes the page in one step.
REGENERATE = "python docs/_tools/cli_reference.py"


def _tool():
    spec = importlib.util.spec_from_file_location("cli_reference", ROOT / "docs" / "_tools" / "cli_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_every_subcommand_and_option_is_on_the_page():
    tool = _tool()
    page = PAGE.read_text()
    headings = set(re.findall(r"^#+ `([^`]+)`$", page, flags=re.M))
    missing = []
    commands = 0
    for top, build in tool.parsers():
        for name, _, parser, _ in tool.walk(build(), top):
            commands += 1
            if name not in headings:
                missing.append(f"the command `{name}`")
                continue
            section = page.split(f"`{name}`\n", 1)[1].split("\n#", 1)[0]
            for action in tool.arguments(parser):
                for spelling in action.option_strings or [action.metavar or action.dest]:
                    if not re.search(rf"`{re.escape(spelling)}[ `]", section):
                        missing.append(f"`{spelling}` of `{name}`")
    assert commands >= 20, f"only {commands} commands found: did a subcommand module fail to import?"
    assert not missing, ("docs/cli.md lacks " + ", ".join(missing) +
                         f". Regenerate the page from the repository root: {REGENERATE}")


def test_generated_part_is_up_to_date():
    tool = _tool()
    page = PAGE.read_text()
    new = tool.page_with(tool.render(), page)
    changed = [line for line in difflib.unified_diff(page.splitlines(), new.splitlines(), "docs/cli.md",
                                                     "parsers", n=0, lineterm="") if line[:1] in "+-"][2:]
    assert new == page, (
        "docs/cli.md is out of date with the parsers (a subcommand, option, default or help text changed). "
        f"Regenerate the page from the repository root: {REGENERATE}\nChanged lines (first 20):\n"
        + "\n".join(changed[:20]))


def test_rendering_escapes_markdown_and_marks_required(tmp_path):
    tool = _tool()
    p = argparse.ArgumentParser(prog="x")
    p.add_argument("--name", required=True, help="an alpha-<name> | or `a_<b>` * 2")
    p.add_argument("--mode", choices=("a", "b"), default="a", help="geometry")
    (name,) = [a for a in tool.arguments(p) if a.dest == "name"]
    (mode,) = [a for a in tool.arguments(p) if a.dest == "mode"]
    assert tool._help(name, "x") == r"**Required.** an alpha-\<name\> \| or `a_<b>` \* 2"
    assert tool._help(mode, "x") == "geometry; one of `a`, `b`"
    assert tool._spelling(mode) == "`--mode MODE`" and tool._default(mode) == "`a`"
    page = "intro\n" + tool.START + "\nold\n" + tool.END + "\nafter\n"
    assert tool.page_with("new\n", page) == "intro\n" + tool.START + "\n\nnew\n\n" + tool.END + "\nafter\n"
