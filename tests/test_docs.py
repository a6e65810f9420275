"""The documentation site: `mkdocs build --strict` passes, so a broken link or anchor, a README
section that no page includes or a war plan that does not load fails CI; and the generated
pages (scripts/docsite.py) cover every war plan field, every shipped game and the code."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.warplans import load_catalog, warplan_json_schema
from tests.conftest import ROOT

CONFIG = ROOT / "mkdocs.yml"
# Material prints a banner about MkDocs 2.0 on every build unless told not to.
QUIET = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}


def build(site: Path, config: str | None = None) -> subprocess.CompletedProcess[str]:
    """Run `mkdocs build --strict`; with `config`, that text instead of mkdocs.yml (read from
    stdin, so its relative paths still resolve from the repository)."""
    source = "-" if config is not None else str(CONFIG)
    return subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "-f", source, "-d", str(site)],
        input=config,
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=QUIET,
        timeout=300,
        check=False,
    )


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("site")
    result = build(out)
    assert result.returncode == 0, result.stderr[-4000:]
    return out


def page(site: Path, path: str) -> str:
    return (site / path / "index.html").read_text(encoding="utf-8")


def test_the_site_builds_strictly_with_every_page_of_the_nav(site: Path) -> None:
    for path in ("", "quickstart", "commands", "cli", "warplans", "warplan-reference"):
        assert (site / path / "index.html").is_file(), path
    assert (site / "warplan.schema.json").is_file()
    assert (site / "operations" / "upgrades" / "index.html").is_file()


def test_the_reference_lists_every_field_of_every_war_plan_model(site: Path) -> None:
    html = page(site, "warplan-reference")
    schema = warplan_json_schema()
    models = {"WarPlan": schema, **schema["$defs"]}
    for name, model in models.items():
        assert f'id="{name.lower()}"' in html, name
        for field in model["properties"]:
            assert f"<code>{field}</code>" in html, f"{name}.{field}"


def test_every_shipped_war_plan_has_a_page_with_its_evidence(site: Path) -> None:
    catalog = load_catalog(ROOT / "warplans")
    assert catalog.plans and not catalog.errors
    index = page(site, "games")
    for name, plan in catalog.plans.items():
        assert f'href="{name}/"' in index, name
        html = page(site, f"games/{name}")
        assert 'id="evidence"' in html, name
        assert plan.verified is not None
        for fact in plan.verified.facts:
            assert f"<code>{fact}</code>" in html, f"{name}: {fact}"


def test_commands_and_architecture_are_read_from_the_code(site: Path) -> None:
    commands = page(site, "commands")
    for command in ("/server create", "/schedule add cron", "/backup restore", "/peon reload"):
        assert command in commands
    assert "peon server create" in page(site, "cli")
    architecture = page(site, "architecture")
    assert architecture.count('<pre class="mermaid">') == 1
    assert "ServerService --&gt; Store" in architecture
    assert "<code>bot/docker_driver.py</code>" in architecture  # the module table


def test_a_broken_link_fails_the_build(tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    for path in (ROOT / "docs").rglob("*"):
        if path.is_file():
            copy = docs / path.relative_to(ROOT / "docs")
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(path.read_bytes())
    with (docs / "quickstart.md").open("a", encoding="utf-8") as f:
        f.write("\nSee [the missing page](missing.md).\n")
    config = CONFIG.read_text(encoding="utf-8").replace("docs_dir: docs", f"docs_dir: {docs}")
    result = build(tmp_path / "site", config)
    assert result.returncode != 0
    assert "missing.md" in result.stderr
