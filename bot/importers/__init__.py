"""Import recipes of other formats as war plans: `peon warplan import FILE`.

`detect(path)` names the format of a file or folder, `import_file(path)` converts it. Each
format lives in its own module (bot/importers/peon.py: the original PEON's plan.json with its
actions/ folder; bot/importers/egg.py: Pterodactyl eggs). What a format has that a war plan
cannot say is listed in `ImportResult.unmapped`, one line each, never dropped silently.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from bot.errors import WarplanError
from bot.warplans import WarPlan

Format = Literal["peon", "egg"]
SNIFF_BYTES = 4 * 1024 * 1024  # recipes and eggs are a few KB; anything bigger is neither


@dataclass(frozen=True)
class ImportResult:
    plan: WarPlan
    yaml_text: str
    unmapped: list[str] = field(default_factory=list)
    # The source says it was never tried (PEON's `0.1.0-untested` scaffolds): it imports and
    # validates, but nobody has seen it run.
    untested: bool = False


def _json_object(path: Path) -> dict[str, Any] | None:
    try:
        if path.stat().st_size > SNIFF_BYTES:
            return None
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    return data if isinstance(data, dict) else None


def detect(path: Path) -> Format | None:
    """The format of a recipe file or folder, or None when it is none PEON imports.

    A folder is a PEON recipe when it holds a plan.json, and so is a file named plan.json;
    another JSON object with `metadata`
    (game_uid, image) beside `ports`/`volumes` is a PEON plan.json; one whose `meta.version`
    is PTDL_v1/PTDL_v2 (or with `startup` and `docker_images`/`image`) is a Pterodactyl egg.
    """
    if path.is_dir():
        return "peon" if (path / "plan.json").is_file() else None
    if path.name == "plan.json":
        return "peon"  # its name says so; a broken one is refused naming the field
    if path.suffix.lower() != ".json":
        return None
    data = _json_object(path)
    if data is None:
        return None
    meta = data.get("metadata")
    if isinstance(meta, dict) and ("ports" in data or "volumes" in data or "image" in meta):
        return "peon"
    egg_meta = data.get("meta")
    version = egg_meta.get("version") if isinstance(egg_meta, dict) else None
    if isinstance(version, str) and version.startswith("PTDL_"):
        return "egg"
    if "startup" in data and ("docker_images" in data or "image" in data):
        return "egg"
    return None


def import_file(
    path: Path, *, image: str | None = None, name: str | None = None, **opts: Any
) -> ImportResult:
    """Convert a recipe of any known format into a validated war plan.

    `image` replaces the image the recipe names, `name` the plan's name. Refusals are
    WarplanError naming the file, the field and the reason.
    """
    if not path.exists():
        raise WarplanError(str(path), "", "does not exist")
    kind = detect(path)
    if kind == "peon":
        from bot.importers.peon import import_peon  # noqa: PLC0415 - one format per module

        return import_peon(path, image=image, name=name)
    if kind == "egg":
        from bot.importers.egg import import_egg  # noqa: PLC0415 - one format per module

        return import_egg(path, image=image, name=name, **opts)
    raise WarplanError(
        str(path),
        "",
        "is neither a PEON recipe (plan.json, or its folder) nor a Pterodactyl egg (egg-*.json)",
    )


class _Dumper(yaml.SafeDumper):
    """Multi-line text (scripts, config files) as YAML block scalars a person can read."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_imported(plan: WarPlan, header: list[str]) -> str:
    """The plan as YAML, with `header` lines as comments on top (source, what was not mapped)."""
    data = plan.model_dump(mode="json", exclude_defaults=True)
    data = {"name": plan.name, "title": plan.title, "image": plan.image, **data}
    body = yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True, width=100)
    top = "".join(f"# {line}\n" if line else "#\n" for line in header)
    return top + body
