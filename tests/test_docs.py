"""Every Python code block of the README and the user guide runs, offline, as written;
the built site shows no Sphinx role raw."""

import re

import pytest
from conftest import REPO_ROOT

pytestmark = pytest.mark.usefixtures("one_torch_thread")

DOCUMENTS = [REPO_ROOT / "README.md", *sorted((REPO_ROOT / "docs").glob("*.md"))]
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


# A reStructuredText role as mkdocstrings leaves it: markdown turns its backticks into
# ``<code>``, so ``:meth:`fit``` is built as ``:meth:<code>fit</code>``.
RAW_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|mod|data|attr|exc|obj):(?:`|<code>)[^`<]*")
HEADING = re.compile(r'<h[1-6] id="([^"]+)"')


def test_built_site_shows_no_raw_sphinx_role(built_site):
    """mkdocstrings renders markdown, not reStructuredText: a cross-reference is written
    ``[`Name`][sktransfer.Path]`` (autorefs), anything else as a ``literal``."""
    pages = sorted(built_site.rglob("*.html"))
    assert pages
    raw = []
    for page in pages:
        html = page.read_text(encoding="utf-8")
        for match in RAW_ROLE.finditer(html):
            headings = HEADING.findall(html, 0, match.start())
            where = f"#{headings[-1]}" if headings else ""
            role = match.group(0).replace("<code>", "`") + "`"
            raw.append(f"{page.relative_to(built_site)}{where}: {role}")
    if raw:
        pytest.fail(f"{len(raw)} raw Sphinx role(s) in the built site:\n" + "\n".join(raw))
