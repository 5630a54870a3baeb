"""docs/errors.md: its Python examples run and say what the page says."""
from __future__ import annotations

import contextlib
import io

from conftest import doc_blocks


def test_errors_page_examples_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    blocks = doc_blocks("docs/errors.md", lang="python")
    assert len(blocks) == 2
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        for block in blocks:
            exec(compile(block, "docs/errors.md", "exec"), {})
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("checkpoint: sneaky.pth holds the object ") and "mkdir" in lines[0]
    assert "refusing to unpickle it" in lines[0]
    assert not __import__("os").path.exists("/tmp/you-have-been-had")
    assert lines[1] == "(2, '--mask: a.png: the file is empty (0 bytes); expected an image')"
    assert lines[2] == "(1, 'out/model.safetensors: no space left on the device')"
