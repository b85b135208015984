"""The README is a short front door and the MkDocs site is complete: every page is in the nav, every nav
entry and every relative link exists, and the README's Python example runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
#: relative Markdown links ``[text](target)``, without a URL scheme or a pure anchor
LINK = re.compile(r"\[[^\]]*\]\((?![a-z][a-z0-9+.-]*:)([^)#\s]+)(#[^)\s]*)?\)")


def nav_pages(nav: list) -> list[str]:
    """Every page path named in a MkDocs `nav` (nested sections flattened)."""
    pages: list[str] = []
    for item in nav:
        value = next(iter(item.values())) if isinstance(item, dict) else item
        if isinstance(value, list):
            pages += nav_pages(value)
        else:
            pages.append(value)
    return pages


def mkdocs_config() -> dict:
    return yaml.safe_load((ROOT / "mkdocs.yml").read_text())


def python_blocks(text: str) -> list[str]:
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def test_readme_is_short() -> None:
    lines = README.read_text().splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; move detail into docs/"


def test_mkdocs_is_strict_and_uses_the_api_plugin() -> None:
    config = mkdocs_config()
    assert config["strict"] is True
    assert config["theme"]["name"] == "material"
    assert any(isinstance(p, dict) and "mkdocstrings" in p for p in config["plugins"])


def test_every_page_is_in_the_nav_and_every_nav_entry_exists() -> None:
    nav = nav_pages(mkdocs_config()["nav"])
    assert len(nav) == len(set(nav)), "a page appears twice in the nav"
    missing = [page for page in nav if not (DOCS / page).is_file()]
    assert not missing, f"nav entries without a file: {missing}"
    pages = sorted(str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md"))
    left_out = [page for page in pages if page not in nav]
    assert not left_out, f"docs pages missing from the mkdocs nav: {left_out}"
    assert "validation.md" in nav


def test_api_pages_name_modules_that_exist() -> None:
    import importlib.util

    names = [name for page in (DOCS / "api").glob("*.md")
             for name in re.findall(r"^::: ([\w.]+)", page.read_text(), flags=re.M)]
    assert names, "the API pages document no module"
    absent = [name for name in names if importlib.util.find_spec(name) is None]
    assert not absent, f"API pages name modules that do not exist: {absent}"


@pytest.mark.parametrize("source", [README, *sorted(DOCS.rglob("*.md"))], ids=lambda p: str(p.relative_to(ROOT)))
def test_relative_links_resolve(source: Path) -> None:
    broken = [target for target, _ in LINK.findall(source.read_text())
              if not (source.parent / target).exists()]
    assert not broken, f"{source.relative_to(ROOT)} links to files that do not exist: {broken}"


def test_readme_links_into_the_docs() -> None:
    targets = {target for target, _ in LINK.findall(README.read_text())}
    assert "docs/index.md" in targets and "docs/getting-started.md" in targets


def test_readme_python_example_runs(_isolated_cache: Path) -> None:
    """The README's example, with random weights in place of the default ones (training those takes
    minutes): it must give one finite, non-negative heatmap in bits per pixel per test image."""
    blocks = python_blocks(README.read_text())
    assert len(blocks) == 1, "the README has exactly one Python example"
    code = blocks[0]
    assert len(code.strip().splitlines()) <= 12
    assert 'weights="default"' in code
    namespace: dict = {}
    exec(compile(code.replace('weights="default"', 'weights="none"'), "README.md", "exec"), namespace)  # noqa: S102
    images = namespace["batch"]["image"]
    heatmaps, result = namespace["heatmaps"], namespace["result"]
    assert heatmaps.shape == (images.shape[0], *images.shape[-2:])
    assert torch.isfinite(heatmaps).all() and (heatmaps >= 0).all()
    assert namespace["iba"].unit == "bits/pixel"
    assert result.heatmap.shape == heatmaps.shape and result.capacity.shape[0] == images.shape[0]
