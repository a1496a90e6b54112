"""The docs: generated tables match their registries, and every link between pages resolves."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from harness import docs
from harness.cli import main

ROOT = Path(__file__).resolve().parent.parent
_LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)\)")
_FENCE = re.compile(r"^```.*?^```", re.S | re.M)


def _links(path: Path) -> list[str]:
    """The link targets of a Markdown page, outside code blocks."""
    return _LINK.findall(_FENCE.sub("", path.read_text(encoding="utf-8")))


def _anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces to hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def _anchors(path: Path) -> set[str]:
    text = _FENCE.sub("", path.read_text(encoding="utf-8"))
    return {_anchor(m) for m in re.findall(r"^#+ (.+)$", text, re.M)}


def test_generated_blocks_match_their_registries():
    drifts = docs.check(ROOT)
    assert not drifts, "run `make docs`: " + "; ".join(map(str, drifts))


def test_a_registry_change_is_drift_until_the_docs_are_rewritten(monkeypatch):
    from harness.methods import METHODS

    monkeypatch.setattr(METHODS.get("lora"), "description", "a description the page does not have")
    assert [str(d) for d in docs.check(ROOT)] == ["docs/methods.md: block `methods` differs from its registry"]


@pytest.mark.parametrize("name", docs.GENERATORS.names())
def test_every_generator_has_a_block_in_a_page(name):
    marker = docs.START.format(name=name)
    assert any(marker in p.read_text(encoding="utf-8") for p in docs.pages(ROOT)), f"no page holds `{marker}`"


def test_check_names_each_drifted_block_and_write_repairs_it(tmp_path, capsys):
    (tmp_path / "docs").mkdir()
    page = tmp_path / "docs" / "methods.md"
    page.write_text("# Methods\n\n<!-- generated: methods -->\n| stale |\n<!-- end generated -->\n\n"
                    "<!-- generated: tasks -->\n" + docs.tasks_table() + "\n<!-- end generated -->\n")
    assert [str(d) for d in docs.check(tmp_path)] == ["docs/methods.md: block `methods` differs from its registry"]
    assert main(["docs", "--check", "--root", str(tmp_path)]) == 1
    assert "docs/methods.md: block `methods`" in capsys.readouterr().err
    assert main(["docs", "--write", "--root", str(tmp_path)]) == 0
    assert docs.check(tmp_path) == []
    assert "| `lora` |" in page.read_text() and page.read_text().startswith("# Methods\n")
    assert main(["docs", "--check", "--root", str(tmp_path)]) == 0


def test_unknown_block_and_missing_end_marker_are_named(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("<!-- generated: methdos -->\nx\n<!-- end generated -->\n"
                                            "<!-- generated: tasks -->\nno end\n")
    found = [str(d) for d in docs.check(tmp_path)]
    assert len(found) == 2
    assert "block `methdos` cannot be generated" in found[0] and "methods" in found[0]  # did you mean
    assert "without its `<!-- end generated -->`" in found[1]
    changed, broken = docs.write(tmp_path)
    assert changed == [] and len(broken) == 2


def test_every_docs_page_linked_from_the_readme_exists():
    linked = [t.split("#")[0] for t in _links(ROOT / "README.md") if t.startswith("docs/")]
    pages = sorted((ROOT / "docs").glob("*.md"))
    assert linked, "the README links no docs page"
    for target in linked:
        assert (ROOT / target).is_file(), f"README.md links {target}, which does not exist"
    assert {p.name for p in pages} <= {Path(t).name for t in linked}, "a docs page the README does not link"


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "docs").glob("*.md")) + ["../README.md"])
def test_every_relative_link_resolves(page):
    path = (ROOT / "docs" / page).resolve()
    for target in _links(path):
        if re.match(r"[a-z]+:", target):  # http:, https:, mailto:
            continue
        file, _, anchor = target.partition("#")
        dest = (path.parent / file).resolve() if file else path
        assert dest.exists(), f"{page}: link to {target}, which does not exist"
        if anchor and dest.suffix == ".md":
            assert anchor in _anchors(dest), f"{page}: link to {target}, which has no heading `#{anchor}`"
