"""The documentation builds with ``mkdocs build --strict`` and renders with no network.

The site is built once per test module into a temporary folder (skipped where the docs
extra is not installed: ``pip install -e ".[docs]"``). Strict mode fails on every broken
link, anchor or cross-reference. The built pages must load every script and stylesheet from
the site itself: MathJax ships in ``docs/javascripts/vendor/`` and the theme uses the system
fonts, so equations and pages render offline.
"""

from __future__ import annotations

import importlib.util
import os
import re
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
MATHJAX = "javascripts/vendor/mathjax/es5/tex-mml-chtml.js"


def _has(module: str) -> bool:
    return importlib.util.find_spec(module) is not None


class _Assets(HTMLParser):
    """Collects a page's ``<script src>`` and ``<link href>`` URLs (all of them, and the
    scripts and stylesheets among them); also notes whether it holds math."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.loaded: list[str] = []  # scripts and stylesheets
        self.has_math = False

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script" and a.get("src"):
            self.urls.append(a["src"])
            self.loaded.append(a["src"])
        elif tag == "link" and a.get("href"):
            self.urls.append(a["href"])
            if "stylesheet" in (a.get("rel") or "").lower().split():
                self.loaded.append(a["href"])
        if "arithmatex" in (a.get("class") or "").split():
            self.has_math = True


def page_assets(html: str) -> _Assets:
    parser = _Assets()
    parser.feed(html)
    return parser


def is_external(url: str) -> bool:
    return re.match(r"^(https?:)?//", url.strip(), re.I) is not None


@pytest.fixture(scope="module")
def site(tmp_path_factory) -> Path:
    if not (_has("mkdocs") and _has("mkdocstrings_handlers.python") and _has("material")):
        pytest.skip("docs extra not installed (pip install -e '.[docs]')")
    out = tmp_path_factory.mktemp("docs") / "site"
    env = dict(os.environ, NO_MKDOCS_2_WARNING="1")
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--quiet", "-f", str(ROOT / "mkdocs.yml"), "-d", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )
    assert proc.returncode == 0, f"mkdocs build --strict failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
    return out


def pages(site: Path) -> list[Path]:
    found = sorted(site.rglob("*.html"))
    assert len(found) > 20, f"only {len(found)} pages built"
    return found


def test_asset_scan_finds_external_urls():
    html = ('<script src="https://cdn.example.org/x.js"></script><link rel="stylesheet" href="//cdn.example.org/x.css">'
            '<script src="js/local.js"></script><a href="https://example.org/">a link, not an asset</a>'
            '<div class="arithmatex">\\(x\\)</div>')
    assets = page_assets(html)
    assert [u for u in assets.urls if is_external(u)] == ["https://cdn.example.org/x.js", "//cdn.example.org/x.css"]
    assert assets.loaded == ["https://cdn.example.org/x.js", "//cdn.example.org/x.css", "js/local.js"]
    assert assets.has_math


def test_docs_build_strict(site):
    for page in ("index.html", "getting-started/index.html", "api/layer/index.html", "benchmarks/index.html",
                 "contributing/index.html"):
        assert (site / page).is_file(), page
    # the API reference really was generated from the docstrings
    assert "graphode.layer.ConnectomeConv" in (site / "api/layer/index.html").read_text()
    # the benchmark results are included whole in the Benchmarks page
    assert "bench_gpu.py" in (site / "benchmarks/index.html").read_text()


def test_no_page_loads_an_external_script_or_stylesheet(site):
    external = {}
    for page in pages(site):
        urls = [u for u in page_assets(page.read_text()).urls if is_external(u)]
        if urls:
            external[str(page.relative_to(site))] = urls
    assert not external, f"pages load assets from the network: {external}"


def test_local_scripts_and_stylesheets_exist(site):
    missing = []
    for page in pages(site):
        for url in page_assets(page.read_text()).loaded:
            if is_external(url):
                continue  # the test above reports those
            path = url.split("#")[0].split("?")[0]
            base = site if path.startswith("/") else page.parent  # 404.html links from the site root
            if path and not (base / path.lstrip("/")).resolve().is_file():
                missing.append(f"{page.relative_to(site)}: {url}")
    assert not missing, missing


def test_math_is_rendered_by_the_bundled_mathjax(site):
    math_pages = 0
    for page in pages(site):
        assets = page_assets(page.read_text())
        if not assets.has_math:
            continue
        math_pages += 1
        loaded = [(page.parent / u).resolve() for u in assets.loaded]
        assert (site / "javascripts/mathjax.js").resolve() in loaded, page
        assert (site / MATHJAX).resolve() in loaded, page
    assert math_pages >= 3, f"only {math_pages} pages with equations: is arithmatex still enabled?"
    # every font the CHTML output can request is in the site
    script = (site / MATHJAX).read_text()
    fonts = set(re.findall(r"MathJax_[A-Za-z0-9-]+\.woff", script))
    assert len(fonts) > 10
    folder = site / "javascripts/vendor/mathjax/es5/output/chtml/fonts/woff-v2"
    assert sorted(f for f in fonts if not (folder / f).is_file()) == []
