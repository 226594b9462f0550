"""Every Python code block of the README and the user guide runs, offline, as written."""

import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.usefixtures("one_torch_thread")

ROOT = Path(__file__).resolve().parents[1]
DOCUMENTS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
FENCE = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def _blocks():
    for doc in DOCUMENTS:
        for i, match in enumerate(FENCE.finditer(doc.read_text())):
            yield pytest.param(match.group(1), id=f"{doc.name}-{i}")


def test_documents_have_code_blocks():
    assert len(list(_blocks())) >= 6


@pytest.mark.parametrize("code", list(_blocks()))
def test_code_block_runs(code, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    exec(compile(code, "<doc>", "exec"), {"__name__": "__main__"})  # as a script runs
