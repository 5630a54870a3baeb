"""The version lives in one place (``alphaclip_core.__version__``), the build reads it, the command reports
it, and CHANGELOG.md agrees with it (policy: CHANGELOG.md, "Versions")."""
from __future__ import annotations

import re
import tomllib
import warnings

import open_clip
import pytest
from packaging.version import Version

import alphaclip_core
import alphaclip_integrations.open_clip  # noqa: F401
from alphaclip_core.checkpoints import save_safetensors
from alphaclip_core.cli import main
from conftest import ROOT

SECTION = re.compile(r"^## \[(\d+\.\d+\.\d+)\] - (Unreleased|\d{4}-\d{2}-\d{2})$", re.M)


def test_version_is_pep440_and_read_by_the_build():
    version = Version(alphaclip_core.__version__)
    assert str(version) == alphaclip_core.__version__, "write the version in its normal form"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in project["project"], "pyproject.toml must not repeat the version (dynamic, one place)"
    assert "version" in project["project"]["dynamic"]
    assert project["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "alphaclip_core.__version__"}
    # what pip's build computes from pyproject.toml (setuptools reads the attribute statically)
    from setuptools.config.pyprojecttoml import read_configuration

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # setuptools calls [tool.setuptools] in pyproject.toml "beta"
        built = read_configuration(ROOT / "pyproject.toml")["project"]["version"]
    assert built == alphaclip_core.__version__


def test_changelog_agrees_with_the_version():
    text = (ROOT / "CHANGELOG.md").read_text()
    sections = SECTION.findall(text)
    assert sections, "CHANGELOG.md has no '## [X.Y.Z] - date' sections"
    version = Version(alphaclip_core.__version__)
    top, date = sections[0]
    if version.is_devrelease:
        assert (top, date) == (version.base_version, "Unreleased"), (
            f"version {version} is a development version: the top CHANGELOG.md section must be "
            f"'## [{version.base_version}] - Unreleased', not '## [{top}] - {date}'")
    else:
        assert top == str(version) and date != "Unreleased", (
            f"version {version} is a release: its CHANGELOG.md section must be dated ('## [{version}] - YYYY-MM-DD')")
    numbers = [Version(v) for v, _ in sections]
    assert numbers == sorted(numbers, reverse=True) and len(set(numbers)) == len(numbers), \
        "CHANGELOG.md sections must run newest first, each version once"
    assert all(d != "Unreleased" for _, d in sections[1:]), "only the top section may be unreleased"
    assert ("0.1.0", "2026-11-27") in sections
    for m in SECTION.finditer(text):  # each section says something
        v, body = m.group(1), text[m.end():].split("\n## ", 1)[0]
        assert re.search(r"^### (Added|Changed|Deprecated|Removed|Fixed|Security)$", body, re.M), v
        assert re.search(r"^- ", body, re.M), v


def test_alphaclip_version_option(capsys):
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out.strip() == f"alphaclip (alpha-clip) {alphaclip_core.__version__}"


def test_alphaclip_info_prints_the_version(tmp_path, capsys):
    save_safetensors(open_clip.create_model("alpha-ViT-Tiny-8"), tmp_path / "tiny.safetensors")
    assert main(["info", str(tmp_path / "tiny.safetensors")]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["package", "alpha-clip", alphaclip_core.__version__]
    assert any(line.startswith("format") for line in lines[1:])
    assert main(["info"]) == 0  # the backbone list starts with it too
    assert capsys.readouterr().out.splitlines()[0].split() == ["package", "alpha-clip", alphaclip_core.__version__]
