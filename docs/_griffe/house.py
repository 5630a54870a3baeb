"""A griffe extension for the site's API reference (loaded by ``mkdocs.yml``): two house conventions
that griffe has no option for.

1. **One ``Args:`` entry may document several parameters.** The code base documents parameters that
   share a meaning on one line, ``rank, world: this process's share``. Google-style parsing takes
   ``rank, world`` for one unknown parameter and warns, which ``mkdocs build --strict`` turns into a
   failure. Such an entry is rewritten into one entry per name, each with the shared description,
   before the docstring is parsed; every name is then still checked against the signature (a
   documented name the function does not take still fails the strict build).
2. **Each object is documented once, where it is defined.** A package re-exports its modules' names
   (``from alphaclip_core import prepare``); listed in ``__all__`` they would be rendered again under
   the package. Re-exports of this distribution's own objects are marked not public here, so the
   pages render every module (``show_submodules``) with each object at its definition.
"""
from __future__ import annotations

import re
from typing import Any, List

import griffe

_SECTION = re.compile(r"^(\s*)(Args|Arguments|Parameters|Params|Keyword Args|Keyword Arguments|Other Parameters):\s*$")
_ROLE = re.compile(r":(?:py:)?(?:func|class|mod|meth|attr|data|exc|obj|const):`(~?)([^`]+)`")
_SHARED = re.compile(r"^(\s+)([A-Za-z_]\w*(?:\s*,\s*[A-Za-z_]\w*)+)(\s*(?:\([^)]*\))?\s*:.*)$")


def split_shared_entries(text: str) -> str:
    """``text`` with every ``a, b: description`` entry of an arguments section written as ``a: description``
    and ``b: description`` (continuation lines follow each copy); other text unchanged."""
    lines = text.split("\n")
    out: List[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        out.append(line)
        i += 1
        header = _SECTION.match(line)
        if not header:
            continue
        base = len(header.group(1))
        entry_indent = None
        while i < len(lines):
            line = lines[i]
            indent = len(line) - len(line.lstrip())
            if line.strip() and indent <= base:
                break  # the section ended
            if entry_indent is None and line.strip():
                entry_indent = indent
            m = _SHARED.match(line) if line.strip() and indent == entry_indent else None
            if not m:
                out.append(line)
                i += 1
                continue
            body = [m.group(3)]
            i += 1
            while i < len(lines) and lines[i].strip() and len(lines[i]) - len(lines[i].lstrip()) > entry_indent:
                body.append(lines[i])  # the entry's continuation lines
                i += 1
            for name in (n.strip() for n in m.group(2).split(",")):
                out.append(m.group(1) + name + body[0])
                out.extend(body[1:])
    return "\n".join(out)


#: the distribution's import packages: a re-export of an object defined in one of them is not rendered twice
OWN_PACKAGES = ("alphaclip_core", "alphaclip_integrations", "alphaclip_train")


def roles_as_code(text: str) -> str:
    """``text`` with Sphinx cross-reference roles written as inline code: ``:func:`a.b``` -> ```a.b```,
    ``:class:`~a.b.C``` -> ```C```."""
    return _ROLE.sub(lambda m: "`" + (m.group(2).split(".")[-1] if m.group(1) else m.group(2)) + "`", text)


class HouseStyle(griffe.Extension):
    """Shared ``Args:`` entries (:func:`split_shared_entries`), Sphinx roles (:func:`roles_as_code`) and one
    rendering per object."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = roles_as_code(split_shared_entries(obj.docstring.value))

    def on_package(self, *, pkg: griffe.Module, **kwargs: Any) -> None:
        if pkg.name in OWN_PACKAGES:
            self._hide_reexports(pkg)

    def _hide_reexports(self, module: griffe.Module) -> None:
        for member in list(module.members.values()):
            if member.is_alias:
                if member.target_path.split(".")[0] in OWN_PACKAGES:
                    member.public = False
            elif member.is_module:
                self._hide_reexports(member)
