"""MkDocs hook that writes the site's generated parts from the code at every build.

mkdocs.yml names this file under `hooks:`, so nothing generated is committed and nothing can
go stale: a build reads README.md, the war plan models, warplans/*.yaml, the slash commands,
the CLI parser and the sources of bot/ and cogs/ as they are.

- Pages added: `warplan-reference.md` (every war plan field, from the pydantic models behind
  `peon warplan schema`), `games/index.md` and one `games/NAME.md` per shipped war plan with
  its evidence (`verified:`). The games are added to the nav under "Games".
- Markers in hand-written pages: `<!-- readme: SECTION -->` becomes that README section (the
  README stays the single source of what it says), `<!-- generated: NAME -->` one of GENERATED.
- A README section that no page includes is a warning, which `mkdocs build --strict` fails on.
"""

from __future__ import annotations

import argparse
import ast
import html
import importlib
import importlib.metadata
import json
import logging
import posixpath
import re
import shlex
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from discord import app_commands  # noqa: TID251 - the site lists the bot's slash commands
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.exceptions import PluginError
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page
from pydantic import BaseModel

from bot.cli import _parser as cli_parser
from bot.warplans import (
    Catalog,
    WarPlan,
    evidence_gaps,
    load_catalog,
    unverified_facts,
    warplan_json_schema,
)

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("bot", "cogs")
README = ROOT / "README.md"
WARPLANS = ROOT / "warplans"
GUIDE = "warplans.md"  # the hand-written war plan guide, in docs/
REFERENCE = "warplan-reference.md"
GAMES = "games"
GAMES_NAV = "Games"  # the nav section the game pages are appended to
# Where PEON is put together: the constructor calls in these functions make the composition
# diagram. A renamed function fails the build, so the diagram never silently empties.
COMPOSITION_SITES = (
    ("bot.app", "open_services"),
    ("bot.__main__", "serve"),
    ("bot.client", "PeonBot.__init__"),
    ("bot.client", "PeonBot.setup_hook"),
    ("bot.camps", "Camps.__init__"),
)
SETUP_HOOK = ("bot.client", "PeonBot.setup_hook")  # its add_cog calls order the commands
SETTINGS_MODULE = "bot.settings"  # configuration: left out of the diagram

# A marker is a line of its own, so the markers can be shown in prose and code.
README_MARKER = re.compile(r"^<!-- *readme: *(.+?) *-->$", re.MULTILINE)
GENERATED_MARKER = re.compile(r"^<!-- *generated: *([a-z-]+) *-->$", re.MULTILINE)
FENCE = re.compile(r"^(`{3,}|~{3,})")
HEADING = re.compile(r"^(#{1,2}) +(.+?) *#* *$")
README_LINK = re.compile(r"\]\(docs/([^)\s]+)\)")
CODE_SPAN = re.compile(r"(`+)(.+?)\1", re.DOTALL)

log = logging.getLogger("mkdocs.hooks.docsite")


# ---------------------------------------------------------------------------------------------
# Markdown helpers


def text(value: object) -> str:
    """Plain text for a table cell or a paragraph: no raw HTML, no accidental markup. Code
    spans the text already has (`like this`) are kept."""
    out: list[str] = []
    pos = 0
    flat = " ".join(str(value).split())
    for m in CODE_SPAN.finditer(flat):
        out.append(_escape(flat[pos : m.start()]))
        out.append(m.group(0))
        pos = m.end()
    out.append(_escape(flat[pos:]))
    return "".join(out)


def _escape(s: str) -> str:
    s = html.escape(s, quote=False)
    return re.sub(r"([\\*_\[\]|#])", r"\\\1", s)


def code(value: object) -> str:
    """A code span that holds any text, backticks included."""
    s = " ".join(str(value).split())
    ticks = "`" * (max((len(t) for t in re.findall(r"`+", s)), default=0) + 1)
    pad = " " if s.startswith("`") or s.endswith("`") or not s.strip() else ""
    return f"{ticks}{pad}{s}{pad}{ticks}"


def table(head: list[str], rows: list[list[str]]) -> str:
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    lines += ["| " + " | ".join(cell or " " for cell in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def link(url: str) -> str:
    return f"<{url}>" if re.match(r"^https?://\S+$", url) else text(url)


# ---------------------------------------------------------------------------------------------
# README sections


def readme_sections(markdown: str) -> dict[str, str]:
    """Heading text -> body, for the README's title (level 1) and its level-2 sections."""
    sections: dict[str, list[str]] = {}
    current: list[str] | None = None
    fence = ""
    for line in markdown.splitlines():
        m = FENCE.match(line.lstrip())
        if m and (not fence or m.group(1).startswith(fence)):
            fence = "" if fence else m.group(1)[0] * 3
        heading = None if fence else HEADING.match(line)
        if heading:
            current = sections.setdefault(heading.group(2), [])
        elif current is not None:
            current.append(line)
    return {title: "\n".join(body).strip() + "\n" for title, body in sections.items()}


def adapt_readme(body: str, page_uri: str) -> str:
    """A README section as a page of the site: links into docs/ made relative to the page, and
    GitHub's `a\\|b` (a pipe in a code span in a table) as Python-Markdown's `a|b`."""
    here = posixpath.dirname(page_uri) or "."

    def relative(m: re.Match[str]) -> str:
        return f"]({posixpath.relpath(m.group(1), here)})"

    def pipes(m: re.Match[str]) -> str:
        return m.group(0).replace("\\|", "|")

    lines = [
        CODE_SPAN.sub(pipes, line) if line.startswith("|") else line for line in body.splitlines()
    ]
    return README_LINK.sub(relative, "\n".join(lines) + "\n")


# ---------------------------------------------------------------------------------------------
# War plan reference, from the models behind the JSON Schema


def _models(root: type[BaseModel]) -> dict[str, type[BaseModel]]:
    """Every model reachable from `root`'s fields, by class name (the schema's $defs keys)."""
    found: dict[str, type[BaseModel]] = {}
    todo: list[type[BaseModel]] = [root]
    while todo:
        model = todo.pop()
        if model.__name__ in found:
            continue
        found[model.__name__] = model
        for info in model.model_fields.values():
            todo += [t for t in _types_in(info.annotation) if issubclass(t, BaseModel)]
    return found


def _types_in(annotation: object) -> Iterator[type]:
    if isinstance(annotation, type):
        yield annotation
    for arg in getattr(annotation, "__args__", ()):
        yield from _types_in(arg)


def _paths(schema: dict[str, Any]) -> dict[str, str]:
    """$defs name -> the YAML path where that model is used, e.g. PortSpec -> ports[]."""
    paths: dict[str, str] = {}

    def visit(node: Any, path: str) -> None:
        if isinstance(node, dict):
            ref = node.get("$ref")
            if isinstance(ref, str):
                name = ref.rsplit("/", 1)[-1]
                if name not in paths:
                    paths[name] = path
                    visit(schema["$defs"][name], path)
                return
            for key, sub in node.get("properties", {}).items():
                visit(sub, f"{path}.{key}" if path else key)
            if "items" in node:
                visit(node["items"], path + "[]")
            for sub in node.get("anyOf", []):
                visit(sub, path)

    visit(schema, "")
    return paths


def _anchor(name: str) -> str:
    return name.lower()


def schema_type(node: dict[str, Any]) -> str:
    """A JSON Schema node as a short type for people: `integer, 1 to 65535`, `list of text`."""
    if "$ref" in node:
        name = node["$ref"].rsplit("/", 1)[-1]
        return f"[{name}](#{_anchor(name)})"
    if "anyOf" in node:
        kinds = [schema_type(n) for n in node["anyOf"] if n.get("type") != "null"]
        return " or ".join(kinds)
    if "enum" in node:
        return "one of " + ", ".join(code(json.dumps(v)) for v in node["enum"])
    if "const" in node:
        return code(json.dumps(node["const"]))
    kind = node.get("type")
    if kind == "array":
        return "list of " + schema_type(node.get("items", {}))
    if kind == "object":
        values = node.get("additionalProperties")
        return "map of text to " + schema_type(values) if isinstance(values, dict) else "mapping"
    name = {"string": "text", "integer": "integer", "number": "number", "boolean": "true/false"}
    out = name.get(str(kind), str(kind or "any"))
    limits = []
    if "minimum" in node and "maximum" in node:
        limits.append(f"{node['minimum']} to {node['maximum']}")
    elif "minimum" in node:
        limits.append(f"at least {node['minimum']}")
    if "exclusiveMinimum" in node:
        limits.append(f"above {node['exclusiveMinimum']}")
    if "maximum" in node and "minimum" not in node:
        limits.append(f"at most {node['maximum']}")
    if node.get("minLength") == 1:
        limits.append("not empty")
    elif "minLength" in node:
        limits.append(f"at least {node['minLength']} characters")
    if "pattern" in node:
        limits.append("matching " + code(node["pattern"]))
    return ", ".join([out, *limits])


def _default(model: type[BaseModel], name: str, required: bool) -> str:
    if required:
        return "required"
    value = model.model_fields[name].get_default(call_default_factory=True)
    if value is None:
        return "none"
    if isinstance(value, BaseModel):
        return "its fields' defaults"
    return code(json.dumps(value))


def guide_meanings(guide: str) -> dict[str, dict[str, str]]:
    """Section heading -> field -> meaning, from the guide's field tables (last column). Every
    section heading is a key, so this also tells which sections the guide has."""
    meanings: dict[str, dict[str, str]] = {}
    section = ""
    for line in guide.splitlines():
        heading = re.match(r"^#{2,3} +(.+?) *$", line)
        if heading:
            section = heading.group(1)
            meanings.setdefault(section, {})
            continue
        cells = [c.strip() for c in line.strip().strip("|").split(" | ")]
        if not line.startswith("|") or len(cells) < 2 or set(cells[1]) <= {"-"}:
            continue
        for name in re.findall(r"`([a-z_]+)`", cells[0]):
            meanings.setdefault(section, {})[name] = cells[-1]
    return meanings


def warplan_reference(guide: str) -> str:
    """Every field of every war plan model: type, default, description."""
    schema = warplan_json_schema()
    models = _models(WarPlan)
    paths = _paths(schema)
    meanings = guide_meanings(guide)
    order = list(paths)
    nested = sorted(schema["$defs"].items(), key=lambda item: order.index(item[0]))
    sections = [("WarPlan", schema), *nested]
    out = [
        "# War plan reference\n",
        "Generated at every build from the pydantic models that validate war plans "
        f"(`bot/warplans.py`), the same ones `peon warplan schema` exports as the "
        f"[JSON Schema](warplan.schema.json). How to write a plan, with examples: the "
        f"[guide]({GUIDE}).\n",
        "Descriptions are the models' own; where a model has none, the meaning is taken from "
        "the guide's tables and marked †. Unknown fields are refused in every section.\n",
    ]
    for name, node in sections:
        path = paths.get(name, "")
        top = path.split(".")[0].removesuffix("[]")
        title = f"`{path}` ({name})" if path else "Top level (WarPlan)"
        out.append(f"## {title} {{ #{_anchor(name)} }}\n")
        if node.get("description") and path:
            out.append(text(node["description"]) + "\n")
        guide_section = "Fields" if not path else top
        if "." not in path and guide_section in meanings:
            out.append(f"In the guide: [{guide_section}]({GUIDE}#{_anchor(guide_section)}).\n")
        required = set(node.get("required", []))
        rows = []
        for field_name, prop in node["properties"].items():
            meaning = prop.get("description", "")
            described = text(meaning)
            if not meaning and "." not in path:
                from_guide = meanings.get(guide_section, {}).get(field_name)
                described = f"{from_guide} †" if from_guide else ""
            rows.append(
                [
                    code(field_name),
                    schema_type(prop),
                    _default(models[name], field_name, field_name in required),
                    described,
                ]
            )
        out.append(table(["field", "type", "default", "description"], rows))
    return "\n".join(out)


# ---------------------------------------------------------------------------------------------
# Games: one page per shipped war plan


def game_page(plan: WarPlan, source: Path) -> str:
    """What a plan runs and how, and the evidence for it."""
    out = [f"# {text(plan.title)}\n"]
    if plan.description:
        out.append(text(plan.description) + "\n")
    out += [
        f"- **War plan**: {code(plan.name)} (`warplans/{source.name}`): "
        + code(f"/server create warplan:{plan.name} name:NAME"),
        f"- **Image**: {code(plan.image)}",
    ]
    if plan.links:
        out.append("- **Documentation**: " + ", ".join(link(u) for u in plan.links))
    resources = plan.resources
    if resources.memory or resources.cpus:
        limits = [f"memory {resources.memory}"] if resources.memory else []
        limits += [f"{resources.cpus:g} CPUs"] if resources.cpus else []
        out.append("- **Limits**: " + ", ".join(limits))
    out.append("")

    if plan.ports:
        out.append("## Ports\n")
        rows = [
            [code(p.name), f"{p.container}/{p.protocol}", str(p.host), text(p.description)]
            for p in plan.ports
        ]
        out.append(table(["name", "container", "host", "description"], rows))
    if plan.variables:
        out.append("## Settings\n")
        server = (
            " `{server}` in a default is the server's name."
            if any("{server}" in str(v.default) for v in plan.variables)
            else ""
        )
        out.append(
            f"Asked for by `/server create` (or `peon server create --set NAME=VALUE`).{server}\n"
        )
        rows = []
        for v in plan.variables:
            rules: list[str] = [v.type]
            rules += ["required"] if v.required else []
            rules += ["secret"] if v.secret else []
            rules += ["generated when empty"] if v.generate else []
            rules += [f"matching {code(v.pattern)}"] if v.pattern else []
            rules += [f"{v.min}..{v.max}"] if v.min is not None or v.max is not None else []
            rules += ["one of " + ", ".join(map(code, v.choices))] if v.choices else []
            default = v.default_text("{server}")
            default = "" if default is None else code(default) if default else '`""`'

            rows.append([code(v.name), code(v.env), ", ".join(rules), default, text(v.description)])
        out.append(table(["setting", "variable", "kind", "default", "description"], rows))
    if plan.volumes:
        out.append("## Data\n")
        rows = [
            [code(v.name), code(v.path), "yes" if v.backup else "no (re-downloadable)"]
            for v in plan.volumes
        ]
        out.append(table(["volume", "path", "backed up"], rows))

    out.append("## How PEON runs it\n")
    out += [f"- {line}" for line in _behaviour(plan)]
    out.append("")
    out.append(_evidence(plan))
    yaml_text = source.read_text(encoding="utf-8")
    body = "\n".join(f"    {line}" if line else "" for line in yaml_text.splitlines())
    out.append(f'??? note "The war plan file: warplans/{source.name}"\n')
    out.append(f"    ```yaml\n{body}\n    ```\n")
    return "\n".join(out)


def _behaviour(plan: WarPlan) -> list[str]:
    ready = plan.ready
    waits = []
    if ready.log:
        waits.append(f"the log line {code(ready.log)}")
    if ready.port:
        waits.append(f"a connection to port {code(ready.port)}")
    lines = [
        f"**Ready**: waits for {' then '.join(waits) or 'the container to keep running for 2 s'}"
        f" (at most {ready.timeout} s)."
    ]
    stop = plan.stop
    how = (
        f"console command {code(stop.console)}"
        if stop.console
        else f"{code(shlex.join(stop.exec))} in the container"
        if stop.exec
        else code(stop.signal)
    )
    lines.append(f"**Stop**: {how}, killed after {stop.grace} s.")
    players = plan.players
    if players is None:
        lines.append("**Players**: not counted (no idle shutdown; hang checks use the ready port).")
    elif players.protocol == "log":
        lines.append(
            f"**Players**: counted from the log (join {code(players.join)}, leave "
            f"{code(players.leave)})."
        )
    else:
        lines.append(f"**Players**: {players.protocol} query on port {code(players.port)}.")
    if players is not None:
        lines += [
            f"**Not counted** when {code(u.env)} matches {code(u.pattern)}: {text(u.reason)}"
            for u in players.uncounted_when
        ]
    save = plan.save
    if save is None or save.mode == "none":
        lines.append("**Backup**: copies the data while the server runs (no save step).")
    elif save.mode in ("pause", "stop"):
        lines.append(f"**Backup**: {save.mode}s the server while the archive is made.")
    else:
        command = save.command if isinstance(save.command, str) else shlex.join(save.command or [])
        confirmed = f", confirmed by {code(save.done)}" if save.done else ""
        after = save.after if isinstance(save.after, str) else shlex.join(save.after or [])
        lines.append(
            f"**Backup**: saves first with {code(command)} ({save.mode}){confirmed}"
            + (f", then {code(after)}" if after else "")
            + "."
        )
    console = plan.console
    if console is not None:
        via = {"stdin": "standard input", "rcon": f"Source RCON on port {code(console.port)}"}
        program = code(shlex.join(console.exec or []))
        lines.append(f"**Console**: {via.get(console.via, f'{program} in the container')}.")
    elif plan.say or (plan.stop.console is not None):
        lines.append("**Console**: standard input.")
    if plan.say:
        lines.append(f"**In-game warnings**: {code(plan.say)}.")
    if plan.entrypoint:
        lines.append(f"**Entrypoint**: {code(shlex.join(plan.entrypoint))}.")
    if plan.command:
        lines.append(f"**Command**: {code(shlex.join(plan.command))}.")
    return lines


def _evidence(plan: WarPlan) -> str:
    ev = plan.verified
    out = ["## Evidence\n"]
    if ev is None:
        out.append('!!! warning "No evidence"\n    This plan has no `verified:` block.\n')
        return "\n".join(out)
    tags = "" if ev.version_tags else " The image publishes no version-pinned tags."
    out.append(f"Checked against {text(ev.version)} on {ev.date}.{tags}\n")
    unverified = set(unverified_facts(plan))
    if unverified:
        out.append(
            f"Could not be checked in the image's source: {len(unverified)} "
            f"(marked **unverified**, each with the reason).\n"
        )
    gaps = evidence_gaps(plan)
    if gaps:
        listed = ", ".join(map(code, gaps))
        out.append(f'!!! warning "Without evidence"\n    {listed}\n')
    rows = [
        [
            code(name),
            ("**unverified**: " if f"facts.{name}" in unverified else "") + text(note),
        ]
        for name, note in ev.facts.items()
    ]
    if rows:
        out.append("### Facts\n")
        out.append(table(["fact", "where it was checked"], rows))
    if ev.env:
        out.append("### Environment\n")
        rows = [
            [code(var), ("**unverified**: " if f"env.{var}" in unverified else "") + text(note)]
            for var, note in ev.env.items()
        ]
        out.append(table(["variable", "where the image reads it"], rows))
    if ev.image_volumes:
        out.append("The image's own volumes: " + ", ".join(map(code, ev.image_volumes)) + ".\n")
    if ev.links:
        out.append("### Sources read\n")
        out += [f"- {link(u)}" for u in ev.links]
        out.append("")
    return "\n".join(out)


def games_index(plans: dict[str, WarPlan]) -> str:
    rows = []
    for name, plan in sorted(plans.items(), key=lambda item: item[1].title.lower()):
        ev = plan.verified
        players = plan.players.protocol if plan.players else ""
        rows.append(
            [
                f"[{text(plan.title)}]({name}.md)",
                code(plan.image),
                players,
                text(ev.version) if ev else "**none**",
                ev.date if ev else "",
                str(len(unverified_facts(plan))),
            ]
        )
    return "\n".join(
        [
            "# Games\n",
            f"The {len(plans)} war plans shipped in `warplans/`, each checked against its "
            "image's source at a named version (`verified:`). *Unverified* counts the facts "
            "that no source shows (each says why); the game's page lists them all. Writing "
            f"your own plan: the [guide](../{GUIDE}); every field: the "
            f"[reference](../{REFERENCE}).\n",
            table(["game", "image", "players", "checked at", "on", "unverified"], rows),
        ]
    )


# ---------------------------------------------------------------------------------------------
# Commands: the slash commands the bot registers and the CLI's parser


def discord_commands(source: Source) -> str:
    """Every slash command and option of the cogs the bot adds, in the order it adds them."""
    out = []
    for cog in source.cogs():
        for top in getattr(cog, "__cog_app_commands__", []):
            commands = [top] if isinstance(top, app_commands.Command) else top.walk_commands()
            for command in commands:
                if isinstance(command, app_commands.Command):
                    out.append(_slash_command(command))
    return "\n".join(out)


def _slash_command(command: app_commands.Command[Any, ..., Any]) -> str:
    out = [f"### /{command.qualified_name}\n", text(command.description) + "\n"]
    rows = []
    for p in command.parameters:
        kind = p.type.name.replace("string", "text").replace("boolean", "true/false")
        if p.choices:
            kind = "one of " + ", ".join(code(c.name) for c in p.choices)
        default = p.default if not isinstance(p.default, bool) else str(p.default).lower()
        shown = "required" if p.required else "" if default is None else code(default)
        described = [] if p.description == "…" else [text(p.description)]
        described += ["suggestions as you type"] if p.autocomplete else []
        rows.append([code(p.display_name), kind, shown, "; ".join(described)])
    if rows:
        out.append(table(["option", "type", "default", "description"], rows))
    return "\n".join(out)


def cli_reference() -> str:
    """Every `peon` subcommand with its arguments and options, from the CLI's own parser."""
    root = cli_parser()
    rows = [["`peon [OPTIONS] COMMAND`", "Options before the command: " + _options(root)]]
    for parser, summary in _leaf_parsers(root, ""):
        usage = " ".join(parser.format_usage().split()).removeprefix("usage: ")
        what = text(summary[:1].upper() + summary[1:] + ".") if summary else ""
        options = _options(parser)
        rows.append([code(usage.replace(" [-h]", "")), f"{what} {options}".strip()])
    return table(["command", "what"], rows)


def _options(parser: argparse.ArgumentParser) -> str:
    shown = []
    for action in parser._actions:
        if not action.option_strings or isinstance(action, argparse._HelpAction):
            continue
        metavar = action.metavar or (action.dest.upper() if action.nargs != 0 else None)
        flags = ", ".join(
            f"{flag} {metavar}" if metavar else flag for flag in action.option_strings
        )
        shown.append(f"{code(flags)}: {text(action.help)}" if action.help else code(flags))
    return "; ".join(shown)


def _leaf_parsers(
    parser: argparse.ArgumentParser, summary: str
) -> Iterator[tuple[argparse.ArgumentParser, str]]:
    groups = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    if not groups:
        yield parser, summary
    for group in groups:
        helps = {a.dest: a.help or "" for a in group._choices_actions}
        for name, sub in group.choices.items():
            yield from _leaf_parsers(sub, helps.get(name, ""))


# ---------------------------------------------------------------------------------------------
# Architecture: read from the sources of bot/ and cogs/


@dataclass
class ClassInfo:
    name: str
    module: str
    node: ast.ClassDef
    params: list[tuple[str, ast.expr | None]] = field(default_factory=list)
    attrs: dict[str, ast.expr] = field(default_factory=dict)

    @property
    def is_error(self) -> bool:
        bases = [ast.unparse(b) for b in self.node.bases]
        return any(b.endswith(("Error", "Exception")) for b in bases)


@dataclass
class Source:
    """The project's modules, parsed: classes, imports and docstrings, without running them."""

    root: Path
    trees: dict[str, ast.Module] = field(default_factory=dict)
    classes: dict[tuple[str, str], ClassInfo] = field(default_factory=dict)
    imported: dict[str, dict[str, str]] = field(default_factory=dict)  # module: name -> origin

    @classmethod
    def read(cls, root: Path) -> Source:
        source = cls(root)
        for package in PACKAGES:
            for path in sorted((root / package).glob("*.py")):
                module = f"{package}.{path.stem}"
                tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
                source.trees[module] = tree
                source.imported[module] = {
                    alias.asname or alias.name: node.module
                    for node in ast.walk(tree)
                    if isinstance(node, ast.ImportFrom) and node.module
                    for alias in node.names
                }
                for node in tree.body:
                    if isinstance(node, ast.ClassDef):
                        source.classes[module, node.name] = _class_info(module, node)
        return source

    def lookup(self, module: str, name: str) -> ClassInfo | None:
        """The project class `name` means in `module`: its own, or one it imports."""
        if (module, name) in self.classes:
            return self.classes[module, name]
        origin = self.imported.get(module, {}).get(name)
        return self.classes.get((origin, name)) if origin else None

    def function(self, module: str, qualname: str) -> tuple[ast.AST, ClassInfo | None]:
        scope: ast.AST = self.trees[module]
        owner = None
        for part in qualname.split("."):
            found = [
                n
                for n in ast.iter_child_nodes(scope)
                if isinstance(n, ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                and n.name == part
            ]
            if not found:
                raise PluginError(f"docsite: {module}.{qualname} is gone; update {__file__}")
            scope = found[0]
            if isinstance(scope, ast.ClassDef):
                owner = self.classes.get((module, scope.name))
        return scope, owner

    def cogs(self) -> list[type]:
        """The cog classes the bot adds in its setup hook, in that order."""
        module, qualname = SETUP_HOOK
        hook, _ = self.function(module, qualname)
        names = [
            ast.unparse(call.args[0].func)
            for call in ast.walk(hook)
            if isinstance(call, ast.Call)
            and ast.unparse(call.func).endswith("add_cog")
            and call.args
            and isinstance(call.args[0], ast.Call)
        ]
        origins = {
            alias.asname or alias.name: node.module
            for node in ast.walk(hook)
            if isinstance(node, ast.ImportFrom) and node.module
            for alias in node.names
        }
        cogs = []
        for name in names:
            if name not in origins:
                raise PluginError(f"docsite: cannot tell where {name} (add_cog) comes from")
            cogs.append(getattr(importlib.import_module(origins[name]), name))
        return cogs


def _class_info(module: str, node: ast.ClassDef) -> ClassInfo:
    info = ClassInfo(node.name, module, node)
    init = next(
        (n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None
    )
    for stmt in node.body:
        if (
            isinstance(stmt, ast.AnnAssign)
            and isinstance(stmt.target, ast.Name)
            and "ClassVar" not in ast.unparse(stmt.annotation)
        ):
            info.attrs[stmt.target.id] = stmt.annotation
            if init is None:  # a dataclass or model: its fields are its parameters
                info.params.append((stmt.target.id, stmt.annotation))
    if init is not None:
        args = init.args
        params = [*args.posonlyargs, *args.args][1:] + args.kwonlyargs
        info.params = [(a.arg, a.annotation) for a in params]
        given = {a.arg: a.annotation for a in params if a.annotation is not None}
        for step in ast.walk(init):
            target: ast.expr | None = None
            annotation: ast.expr | None = None
            if isinstance(step, ast.AnnAssign):
                target, annotation = step.target, step.annotation
            elif isinstance(step, ast.Assign) and len(step.targets) == 1:
                target = step.targets[0]
                value = step.value
                if isinstance(value, ast.Name) and value.id in given:
                    annotation = given[value.id]
                elif isinstance(value, ast.Call):
                    annotation = value.func
            if (
                isinstance(target, ast.Attribute)
                and isinstance(target.value, ast.Name)
                and target.value.id == "self"
                and annotation is not None
            ):
                info.attrs.setdefault(target.attr, annotation)
    return info


@dataclass
class Composition:
    """Who is built where, and which built part each constructor is handed."""

    nodes: dict[str, ClassInfo] = field(default_factory=dict)
    needs: set[tuple[str, str]] = field(default_factory=set)  # constructor arguments
    builds: set[tuple[str, str]] = field(default_factory=set)  # made in the owner's methods


def composition(source: Source) -> Composition:
    graph = Composition()
    for module, qualname in COMPOSITION_SITES:
        site, owner = source.function(module, qualname)
        resolve = _resolver(source, module, site, owner)
        raised = {id(n) for r in ast.walk(site) if isinstance(r, ast.Raise) for n in ast.walk(r)}
        for call in ast.walk(site):
            if not isinstance(call, ast.Call) or id(call) in raised:
                continue
            built = resolve(call.func)
            if built is None or built.is_error or built.module == SETTINGS_MODULE:
                continue
            graph.nodes[built.name] = built
            given = list(zip(built.params, call.args, strict=False))
            given += [  # keyword arguments, with the annotation of the parameter they fill
                ((kw.arg, dict(built.params).get(kw.arg)), kw.value)
                for kw in call.keywords
                if kw.arg
            ]
            if owner is not None and owner.name != built.name:
                graph.builds.add((owner.name, built.name))
            for (_, annotation), value in given:
                needed = resolve(value) or _annotated(source, built.module, annotation)
                if needed is None or needed.module == SETTINGS_MODULE:
                    continue
                if needed.name != built.name:
                    graph.nodes[needed.name] = needed
                    graph.needs.add((built.name, needed.name))
    return graph


def _annotated(source: Source, module: str, annotation: ast.expr | None) -> ClassInfo | None:
    """The first project class named in an annotation (`ServerService | None`: ServerService)."""
    if annotation is None:
        return None
    if isinstance(annotation, ast.Constant) and isinstance(annotation.value, str):
        annotation = ast.parse(annotation.value, mode="eval").body
    for node in ast.walk(annotation):
        if isinstance(node, ast.Name) and (found := source.lookup(module, node.id)):
            return found
    return None


def _resolver(
    source: Source, module: str, site: ast.AST, owner: ClassInfo | None
) -> Callable[[ast.expr], ClassInfo | None]:
    """Resolve an expression in a composition site to the project class of its value."""
    local: dict[str, ClassInfo] = {}

    def resolve(expr: ast.expr) -> ClassInfo | None:
        if isinstance(expr, ast.Name):
            if expr.id == "self":
                return owner
            return local.get(expr.id) or source.lookup(module, expr.id)
        if isinstance(expr, ast.Attribute):
            holder = resolve(expr.value)
            if holder is not None and expr.attr in holder.attrs:
                return _annotated(source, holder.module, holder.attrs[expr.attr])
            return None
        if isinstance(expr, ast.Call):
            built = resolve(expr.func)
            if built is not None:
                return built
            if isinstance(expr.func, ast.Name):  # a factory: its return annotation
                for fn in ast.walk(source.trees[module]):
                    if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and (
                        fn.name == expr.func.id
                    ):
                        return _annotated(source, module, fn.returns)
                origin = source.imported.get(module, {}).get(expr.func.id)
                if origin in source.trees:
                    for fn in source.trees[origin].body:
                        if isinstance(fn, ast.FunctionDef | ast.AsyncFunctionDef) and (
                            fn.name == expr.func.id
                        ):
                            return _annotated(source, origin, fn.returns)
        return None

    if isinstance(site, ast.FunctionDef | ast.AsyncFunctionDef):
        args = site.args
        for a in [*args.posonlyargs, *args.args, *args.kwonlyargs]:
            if (found := _annotated(source, module, a.annotation)) is not None:
                local[a.arg] = found
    for node in ast.walk(site):
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Call):
            for target in node.targets:
                if isinstance(target, ast.Name) and (found := resolve(node.value)):
                    local[target.id] = found
        elif (
            isinstance(node, ast.withitem)
            and isinstance(node.optional_vars, ast.Name)
            and (found := resolve(node.context_expr))
        ):
            local[node.optional_vars.id] = found
    return resolve


def _talks_to_discord(source: Source, module: str) -> bool:
    return any(lib == "discord" for lib in _libraries(source.trees[module]))


def composition_diagram(source: Source) -> str:
    """Solid arrows: handed to the constructor. Dotted: built inside the part it comes from,
    drawn only for a part that nothing is handed, so that every part is connected."""
    graph = composition(source)
    sides: dict[bool, list[ClassInfo]] = {True: [], False: []}
    for info in graph.nodes.values():
        sides[_talks_to_discord(source, info.module)].append(info)
    lines = ["```mermaid", "flowchart TB"]
    for discord_side, title in ((True, "Discord side"), (False, "Core: no Discord")):
        lines.append(f'  subgraph {"discord" if discord_side else "core"}["{title}"]')
        for info in sorted(sides[discord_side], key=lambda i: i.name):
            path = info.module.replace(".", "/") + ".py"
            lines.append(f'    {info.name}["{info.name}<br/>{path}"]')
        lines.append("  end")
    lines += [f"  {a} --> {b}" for a, b in sorted(graph.needs)]
    linked = {frozenset(edge) for edge in graph.needs}
    handed = {b for _, b in graph.needs}
    lines += [
        f"  {a} -.-> {b}"
        for a, b in sorted(graph.builds)
        if b not in handed and frozenset((a, b)) not in linked
    ]
    lines.append("```")
    return "\n".join(lines) + "\n"


def _libraries(tree: ast.Module) -> set[str]:
    """Third-party top-level modules a module imports (not the standard library, not ours)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names and n not in PACKAGES} - {
        "__future__"
    }


def _project_imports(tree: ast.Module) -> set[str]:
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return {".".join(n.split(".")[:2]) for n in names if n.split(".")[0] in PACKAGES}


def api_routes() -> str:
    """Every /api/v1 route, from the API's own route table (bot/api/routes.py)."""
    from bot.api.routes import ROUTES  # noqa: PLC0415 - aiohttp only for this page

    rows = []
    for r in ROUTES:
        body = code(r.body.__name__) if r.body else ""
        answer = "text/event-stream" if r.stream else (r.response.__name__ if r.response else "")
        status = f"{r.status} {code(answer)}" if answer else str(r.status)
        rows.append([code(f"{r.method} {r.path}"), text(r.summary), body, status])
    return table(["Route", "What", "Body", "Answer"], rows)


def library_table(source: Source) -> str:
    """Every third-party library the code imports, with the modules that import it."""
    distributions = importlib.metadata.packages_distributions()
    users: dict[str, list[str]] = {}
    for module, tree in source.trees.items():
        for lib in _libraries(tree):
            users.setdefault(lib, []).append(module)
    rows = [
        [
            code(lib) + f" ({', '.join(distributions.get(lib, [lib]))})",
            ", ".join(code(m.replace(".", "/") + ".py") for m in sorted(modules)),
        ]
        for lib, modules in sorted(users.items())
    ]
    return table(["library (distribution)", "imported by"], rows)


def module_table(source: Source) -> str:
    rows = []
    for module, tree in source.trees.items():
        doc = (ast.get_docstring(tree) or "").split("\n\n")[0]
        used = sorted(_project_imports(tree) - {module})
        rows.append(
            [
                code(module.replace(".", "/") + ".py"),
                text(doc),
                ", ".join(m.split(".", 1)[1] if m.startswith("bot.") else m for m in used),
                ", ".join(sorted(_libraries(tree))),
            ]
        )
    return table(["module", "what it is", "uses (bot/ unless named)", "libraries"], rows)


# ---------------------------------------------------------------------------------------------
# MkDocs events


GENERATED: dict[str, Callable[[Source], str]] = {
    "discord-commands": discord_commands,
    "cli": lambda _: cli_reference(),
    "composition": composition_diagram,
    "libraries": library_table,
    "modules": module_table,
    "api-routes": lambda _: api_routes(),
}


# What one build reads once. MkDocs keeps this module across `mkdocs serve` rebuilds, so each
# build starts it anew (on_pre_build).
_read: dict[str, Any] = {}


def _source() -> Source:
    if "source" not in _read:
        _read["source"] = Source.read(ROOT)
    source: Source = _read["source"]
    return source


def _readme() -> dict[str, str]:
    if "readme" not in _read:
        _read["readme"] = readme_sections(README.read_text(encoding="utf-8"))
    sections: dict[str, str] = _read["readme"]
    return sections


def _catalog() -> Catalog:
    catalog = load_catalog(WARPLANS)
    if catalog.errors:
        raise PluginError("docsite: " + "; ".join(str(e) for e in catalog.errors))
    return catalog


def on_pre_build(config: MkDocsConfig) -> None:
    _read.clear()


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    """Append one nav entry per shipped game under the Games section."""
    for item in config.nav or []:
        if isinstance(item, dict) and isinstance(item.get(GAMES_NAV), list):
            plans = sorted(_catalog().plans.values(), key=lambda p: p.title.lower())
            item[GAMES_NAV] += [{p.title: f"{GAMES}/{p.name}.md"} for p in plans]
            return config
    raise PluginError(f"docsite: mkdocs.yml's nav has no '{GAMES_NAV}' section to fill")


def on_files(files: Files, config: MkDocsConfig) -> Files:
    catalog = _catalog()
    guide = Path(config.docs_dir, GUIDE).read_text(encoding="utf-8")
    files.append(File.generated(config, REFERENCE, content=warplan_reference(guide)))
    files.append(File.generated(config, f"{GAMES}/index.md", content=games_index(catalog.plans)))
    for name, plan in catalog.plans.items():
        page = game_page(plan, catalog.sources[name])
        files.append(File.generated(config, f"{GAMES}/{name}.md", content=page))

    sections = _readme()
    included = {
        m.group(1)
        for f in files.documentation_pages()
        if not f.generated_by
        for m in README_MARKER.finditer(f.content_string)
    }
    for title in sections:
        if title not in included:
            log.warning("README section '%s' is on no page: add <!-- readme: %s -->", title, title)
    return files


def on_page_markdown(markdown: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    if "<!--" not in markdown:
        return markdown
    sections = _readme()

    def readme(m: re.Match[str]) -> str:
        title = m.group(1)
        if title not in sections:
            raise PluginError(f"{page.file.src_uri}: README.md has no section '{title}'")
        return adapt_readme(sections[title], page.file.src_uri)

    def generated(m: re.Match[str]) -> str:
        name = m.group(1)
        if name not in GENERATED:
            known = ", ".join(GENERATED)
            raise PluginError(f"{page.file.src_uri}: no generated part '{name}' ({known})")
        return GENERATED[name](_source())

    return GENERATED_MARKER.sub(generated, README_MARKER.sub(readme, markdown))
