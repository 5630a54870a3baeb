"""The documentation site: ``mkdocs build --strict`` passes, every page is in the nav, the API reference
covers every module once, and the griffe extension behind it (docs/_griffe/house.py) does what it says."""
from __future__ import annotations

import importlib.util
import logging
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest
import yaml

from conftest import ROOT

PACKAGES = {"alphaclip_core": ROOT / "alphaclip_core", "alphaclip_integrations": ROOT / "integrations",
            "alphaclip_train": ROOT / "train"}


def _house():
    spec = importlib.util.spec_from_file_location("house", ROOT / "docs" / "_griffe" / "house.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def nav_pages(nav) -> List[str]:
    """The page paths a mkdocs ``nav`` names (nested sections; ``Title: page.md`` or bare ``page.md``)."""
    out: List[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            out += nav_pages(value)
        elif isinstance(value, str) and not re.match(r"^[a-z]+://", value):
            out.append(value)
    return out


def public_modules() -> List[str]:
    """Every public module of the three import packages (no ``_`` name anywhere in the path)."""
    out = []
    for package, folder in PACKAGES.items():
        for path in sorted(folder.rglob("*.py")):
            parts = path.relative_to(folder).with_suffix("").parts
            if parts[-1] == "__init__":
                parts = parts[:-1]
            if any(p.startswith("_") for p in parts):
                continue
            out.append(".".join((package,) + parts))
    return out


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    """The site built by ``mkdocs build --strict`` into a temporary folder (docs/ itself is not written to)."""
    out = tmp_path_factory.mktemp("site")
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)], cwd=ROOT,
                          capture_output=True, text=True, timeout=300, env=env)
    warnings = [line for line in proc.stderr.splitlines() if "WARNING" in line or "ERROR" in line]
    assert proc.returncode == 0, (
        "mkdocs build --strict failed. Each warning below is a failure; a griffe one names a docstring "
        "(a parameter documented but not in the signature, an Args entry that is not `name: description`):\n"
        + "\n".join(warnings or proc.stderr.splitlines()[-30:]))
    return out


def test_mkdocs_build_strict_passes(site):
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    for page in nav_pages(config["nav"]):
        built = site / (page[:-3] + "/index.html" if page != "index.md" else "index.html")
        assert built.is_file(), f"{page} was not built ({built})"
    changelog = (site / "changelog" / "index.html").read_text()
    assert "Keep a Changelog" in changelog and "0.1.0" in changelog, "the changelog page should include CHANGELOG.md"


def test_api_reference_documents_every_module_once(site):
    html = "".join((site / "api" / name / "index.html").read_text() for name in ("core", "integrations", "train"))
    ids = re.findall(r'<h[1-6] id="([^"]+)"', html)
    missing = [m for m in public_modules() if m not in ids]
    assert not missing, f"modules missing from the API reference (docs/api/*.md render each package with " \
                        f"show_submodules): {missing}"
    dupes = sorted({i for i in ids if ids.count(i) > 1})
    assert not dupes, f"headings rendered twice: {dupes[:10]}"
    # a re-exported name is documented where it is defined, not again under the package
    assert "alphaclip_core.transform.prepare" in ids and "alphaclip_core.prepare" not in ids
    assert "alphaclip_core.alpha.prepare" not in ids          # nor again under the module that re-exports it
    assert "alphaclip_integrations.hf.convert.save_hf" in ids and "alphaclip_integrations.hf.save_hf" not in ids
    # shared Args entries are split: both parameters of `rank, world: ...` are documented
    grounding = html[html.index('id="alphaclip_train.prepare.grounding.prepare_grounding"'):]
    table = grounding[:grounding.index("</table>")]
    assert re.search(r"<code>rank</code>", table) and re.search(r"<code>world</code>", table)
    assert ":func:`" not in html and ":class:`" not in html


def test_every_docs_page_is_in_the_nav():
    config = yaml.safe_load((ROOT / "mkdocs.yml").read_text())
    listed = nav_pages(config["nav"])
    pages = sorted(str(p.relative_to(ROOT / "docs")) for p in (ROOT / "docs").rglob("*.md")
                   if not any(part.startswith("_") for part in p.relative_to(ROOT / "docs").parts))
    missing = [p for p in pages if p not in listed]
    assert not missing, (
        f"docs pages not in mkdocs.yml's nav: {missing}. Every page of docs/ belongs on the site: add each under "
        "`nav:` in mkdocs.yml (e.g. `- My topic: my-topic.md` under Guides), in the place a reader would look "
        "for it.")
    absent = [p for p in listed if not (ROOT / "docs" / p).is_file()]
    assert not absent, f"mkdocs.yml's nav names pages that do not exist in docs/: {absent}"
    assert len(listed) == len(set(listed)), "a page is listed twice in the nav"


# ------------------------------------------------------------------------------------------------ the extension
def test_shared_args_entries_are_split():
    house = _house()
    text = ("Do it.\n\nArgs:\n    a, b: the pair, as in\n        another line.\n    c (int): one.\n\n"
            "    d, e (float): two.\nReturns:\n    x, y: not an argument.\n")
    assert house.split_shared_entries(text) == (
        "Do it.\n\nArgs:\n    a: the pair, as in\n        another line.\n    b: the pair, as in\n        another line."
        "\n    c (int): one.\n\n    d (float): two.\n    e (float): two.\nReturns:\n    x, y: not an argument.\n")
    assert house.roles_as_code(":func:`prepare` and :class:`~a.b.Model`, :py:meth:`x.y`") == \
        "`prepare` and `Model`, `x.y`"


def test_extension_keeps_griffe_checking_names(tmp_path, caplog):
    """Split entries parse as one parameter each without a warning; a name the function does not take still warns."""
    import griffe

    house = _house()
    code = ('def f(rank: int, world: int) -> None:\n'
            '    """Do it.\n\n    Args:\n        rank, world: this process\'s share.\n    """\n'
            'def g(rank: int) -> None:\n'
            '    """Do it.\n\n    Args:\n        rank, world: this process\'s share.\n    """\n')
    (tmp_path / "m.py").write_text(code)
    module = griffe.load("m", search_paths=[str(tmp_path)], extensions=griffe.load_extensions(house.HouseStyle))
    with caplog.at_level(logging.WARNING):
        sections = module["f"].docstring.parse("google", warn_missing_types=False)
    params = [p for s in sections if s.kind.value == "parameters" for p in s.value]
    assert [(p.name, p.description) for p in params] == [("rank", "this process's share."),
                                                        ("world", "this process's share.")]
    assert not [r for r in caplog.records if "does not appear" in r.getMessage()]
    with caplog.at_level(logging.WARNING):
        module["g"].docstring.parse("google", warn_missing_types=False)
    assert any("Parameter 'world' does not appear in the function signature" in r.getMessage() for r in caplog.records)
