"""The site builds in strict mode, its generated pages follow the code, and every link and image resolves."""
import re
from html.parser import HTMLParser
from pathlib import Path
from urllib.parse import unquote, urlsplit

import pytest

from diffsolve.analysis.convergence import why_order_is_not_measured
from diffsolve.cli import build_parser
from diffsolve.solvers import registry_entries
from diffsolve.solvers.peers import PEER_MATCHES

ROOT = Path(__file__).resolve().parents[2]
DOCS = ROOT / "docs"
# Modules that only warn and re-export another module, private modules, and pytest-benchmark files.
UNDOCUMENTED = {"diagnostics", "reflow", "skip_tuning", "pretrained_adapters.diffusers_scheduler", "models.evaluate",
                "bench.reference", "bench.metrics", "bench.problems", "bench.bench_kernels",
                "bench.bench_loop_overhead", "__main__", "kernels._triton_impl"}
NOT_PACKAGE = {"tests", "scripts", "build", "docs", "site", "weights", "assets", "__pycache__"}


def package_modules() -> set[str]:
    out = set()
    for path in ROOT.rglob("*.py"):
        rel = path.relative_to(ROOT)
        if rel.parts[0].startswith(".") or NOT_PACKAGE & set(rel.parts) or rel.parts[0].endswith(".egg-info"):
            continue
        name = ".".join(rel.with_suffix("").parts)
        name = name.removesuffix("__init__").rstrip(".")
        if name not in UNDOCUMENTED:
            out.add(f"diffsolve.{name}" if name else "diffsolve")
    return out


@pytest.mark.slow
def test_every_public_module_has_an_api_reference_entry():
    documented = set(re.findall(r"^::: (\S+)", "\n".join(p.read_text() for p in (DOCS / "api").glob("*.md")), re.M))
    assert package_modules() - documented == set()
    assert documented - package_modules() == set()


@pytest.mark.slow
def test_strict_build_succeeds(built_site):
    site, seconds, log = built_site
    assert (site / "index.html").is_file() and (site / "api" / "core.html").is_file()
    assert "WARNING" not in log


@pytest.mark.slow
def test_solver_table_is_generated_from_the_registry(built_site):
    html = (built_site[0] / "solvers.html").read_text()
    for name in registry_entries():
        assert f"<code>{name}</code>" in html, name
    assert "<!-- generated" not in html
    # measured orders (the numbers tests/solvers/test_convergence.py checks) and the peer table's rows
    measured = [n for n in registry_entries() if why_order_is_not_measured(n) is None]
    assert len(re.findall(r"\(measured \d\.\d\d\)", html)) == len(measured)
    for m in PEER_MATCHES:
        assert f"{m.library} <code>{m.peer}</code>" in html, m


@pytest.mark.slow
def test_command_line_reference_is_generated_from_the_parser(built_site):
    html = (built_site[0] / "cli.html").read_text()
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    for name, parser in sub.choices.items():
        assert f"diffsolve {name}" in html
        for action in parser._actions:
            for flag in action.option_strings:
                assert flag in html, (name, flag)


class Refs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.refs, self.ids = [], set()

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        if "id" in a:
            self.ids.add(a["id"])
        if tag == "a" and a.get("href"):
            self.refs.append(a["href"])
        if tag in ("img", "script") and a.get("src"):
            self.refs.append(a["src"])
        if tag == "link" and a.get("href"):
            self.refs.append(a["href"])


@pytest.mark.slow
def test_every_internal_link_image_and_anchor_resolves(built_site):
    site = built_site[0]
    pages = {p: Refs() for p in site.rglob("*.html")}
    for page, refs in pages.items():
        refs.feed(page.read_text())
    broken = []
    for page, refs in pages.items():
        if page.name == "404.html":     # served at any depth, so its links are absolute to the site's root
            continue
        for ref in refs.refs:
            parts = urlsplit(ref)
            if parts.scheme or ref.startswith(("//", "mailto:")):
                continue
            target = (page.parent / unquote(parts.path)).resolve() if parts.path else page
            if target.is_dir():
                target = target / "index.html"
            if not target.exists():
                broken.append(f"{page.relative_to(site)} -> {ref}")
            elif parts.fragment and target.suffix == ".html" and parts.fragment not in pages[target].ids:
                broken.append(f"{page.relative_to(site)} -> {ref} (no such anchor)")
    assert broken == [], "\n".join(broken)


def test_paths_the_pages_quote_exist():
    text = "\n".join(p.read_text() for p in DOCS.rglob("*.md")) + (ROOT / "README.md").read_text()
    quoted = set(re.findall(r"\b((?:tests|scripts|bench)/[\w/]+\.py)\b", text))
    assert quoted and {q for q in quoted if not (ROOT / q).is_file()} == set()
