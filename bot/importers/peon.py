"""Import a recipe of the original PEON (the-peon-project/peon-warplans) as a war plan.

A recipe is a folder `<game_uid>/` with `plan.json` and an `actions/` folder of scripts (some
also `data/`). The plan becomes what the original orchestrator (the-peon-project/peon-orc,
app/modules/plans.py, create_new_warcamp -> update_build_file) would run:

- ports: only the FIRST port group (`identify_available_port_group` takes `ports[0]`), each
  published 1:1; "tcp" and "udp" as given, any other protocol ("tcp/udp", "all") as both tcp
  and udp on the same number; every port also exported as `NAME=number` (recipe scripts read
  them: `-port $PORT`).
- environment: null means the user must give it; a value is a default the user may change;
  STEAM_ID (never taken from the user by the original's consolidate_settings) and the app's
  identity are fixed env.
- volumes: `~!/X` is the server folder's X, into which the original copies the whole recipe
  (shutil.copytree), so the recipe's X/ files are in that volume: actions/ scripts are
  brought along as `files:` (written before every start), other folders' files only when
  missing. Two sources on one path (the `0.1.0-untested` scaffolds map ~!/data and ~!/user
  to one folder; Docker refuses a duplicate mount point) become one volume.
- the container runs as 1000:1000, as the original's docker-compose.yml says.
"""

from __future__ import annotations

import json
import posixpath
import re
import stat
from pathlib import Path
from typing import Any

from bot.errors import WarplanError
from bot.importers import ImportResult, dump_imported
from bot.warplans import ENV_NAME, SLUG, VAR_NAME, parse_warplan

# The original's docker-compose.yml always runs the game as this user (update_build_file).
PEON_USER = "1000:1000"
# Keys the original never takes from a user (consolidate_settings skips STEAM_ID), or that
# name the app and where it is installed: changing them breaks the recipe, so they are fixed
# env rather than settings.
FIXED_ENV = {"STEAM_ID", "STEAMAPP", "STEAMAPPID", "STEAM_APP_ID", "STEAMAPPDIR", "NOTES"}
# Environment keys whose values are secrets: passwords (*_PW, *PASSWORD*), tokens, keys.
SECRET_ENV = re.compile(r"PASS|PWD?(_|$)|TOKEN|SECRET|GSLT|(^|_)(API_?)?KEY$", re.IGNORECASE)
# Volumes that hold what a backup must keep (worlds, saves, settings); the others are the
# recipe's scripts and the game install that steamcmd downloads again.
NOT_BACKED_UP = {"actions", "data"}
FILE_MAX = 256 * 1024  # a recipe's scripts and configs are a few KB
MARK = "~!"


def _fail(path: Path, field: str, reason: str) -> WarplanError:
    return WarplanError(str(path), field, reason)


def _slug(text: str, fallback: str) -> str:
    slug = re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")[:32].strip("-")
    return slug if slug and re.match(SLUG, slug) else fallback


def _unique(base: str, used: set[str]) -> str:
    name, n = base, 2
    while name in used:
        suffix = f"-{n}"
        name, n = base[: 32 - len(suffix)] + suffix, n + 1
    used.add(name)
    return name


def _text(value: Any) -> str:
    # The original writes `f"{KEY}={value}"`: Python's own text of the JSON value.
    return f"{value}"


def _locate(path: Path) -> tuple[Path, Path]:
    """(plan.json, the recipe folder) for a path to either."""
    if path.is_dir():
        return path / "plan.json", path
    return path, path.parent


def _title(folder: Path, uid: str) -> str:
    """The game's name (recipes carry no metadata.title): its README's heading, else the
    collection's plans.json, else the uid."""
    readme = folder / "README.md"
    try:
        for line in readme.read_text(encoding="utf-8").splitlines():
            if line.startswith("# ") and line[2:].strip():
                return line[2:].strip()
    except (OSError, UnicodeDecodeError):
        pass
    try:
        registry = json.loads((folder.parent / "plans.json").read_text(encoding="utf-8"))
        for entry in registry if isinstance(registry, list) else []:
            if isinstance(entry, dict) and entry.get("game_uid") == uid and entry.get("title"):
                return str(entry["title"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        pass
    return uid.replace("-", " ").replace("_", " ").title() or "Imported"


def _ports(src: Path, raw: Any, unmapped: list[str]) -> tuple[list[dict[str, Any]], dict[str, str]]:
    """The first port group as plan ports, and the NAME=number variables it exports."""
    if raw is None or raw == []:
        return [], {}
    if not isinstance(raw, list):
        raise _fail(src, "ports", "must be a list of port groups ([[{NAME: [port, protocol]}]])")
    group, where = raw[0], "ports[0]"
    if isinstance(group, dict):  # a flat list: one group the old format wrote unnested
        group, where = raw, "ports"
        unmapped.append("ports: a flat list, read as one port group")
    elif not isinstance(group, list):
        raise _fail(src, "ports[0]", "must be a list of {NAME: [port, protocol]}")
    if len(raw) > 1 and where == "ports[0]":
        unmapped.append(
            f"ports[1:]: {len(raw) - 1} alternative port group(s) not used; the original "
            "publishes only the first"
        )
    ports: list[dict[str, Any]] = []
    exported: dict[str, str] = {}
    used: set[str] = set()
    seen: set[tuple[int, str]] = set()
    for i, entry in enumerate(group):
        field = f"{where}[{i}]"
        if not isinstance(entry, dict) or not entry:
            raise _fail(src, field, "must be {NAME: [port, protocol]}")
        key = next(iter(entry))
        if len(entry) > 1:
            unmapped.append(f"{field}: only its first port {key} is used, as the original does")
        field = f"{field}.{key}"
        spec = entry[key]
        if not isinstance(spec, list) or len(spec) < 2:
            raise _fail(src, field, "must be [port, protocol]")
        try:
            number = int(str(spec[0]))
        except ValueError:
            raise _fail(src, field, f"port {spec[0]!r} is not a number") from None
        if not 1 <= number <= 65535:
            raise _fail(src, field, f"port {number} is not between 1 and 65535")
        proto = str(spec[1]).lower()
        protocols = [proto] if proto in ("tcp", "udp") else ["tcp", "udp"]
        if proto not in ("tcp", "udp", "tcp/udp", "udp/tcp", "all", "both"):
            unmapped.append(f"{field}: protocol {spec[1]!r} published as tcp and udp, as the "
                            "original does with any protocol but tcp or udp")  # fmt: skip
        env_name = str(key).upper()
        if not re.match(ENV_NAME, env_name):
            raise _fail(src, field, "is not a valid environment variable name")
        exported[env_name] = _text(spec[0])  # a repeated name: the last one wins, as in compose
        base = _slug(str(key).replace("_", "-"), "port")
        first = ""
        for protocol in protocols:
            if (number, protocol) in seen:
                unmapped.append(f"{field}: {number}/{protocol} is already published")
                continue
            seen.add((number, protocol))
            # One number for both protocols: "port" and "port-udp".
            first = name = _unique(f"{first}-{protocol}" if first else base, used)
            # Published 1:1 as the original does: players and the game's own announcements
            # expect the number the recipe names.
            ports.append({"name": name, "container": number, "protocol": protocol, "host": number})
    return ports, exported


def _variable_name(key: str, used: set[str]) -> str:
    var = re.sub(r"[^a-z0-9_]+", "_", key.lower()).strip("_")[:48] or "var"
    if not re.match(VAR_NAME, var):
        var = f"v_{var}"[:48]
    name, n = var, 2
    while name in used:
        name, n = f"{var[:44]}_{n}", n + 1
    used.add(name)
    return name


def _environment(
    src: Path, raw: Any, exported: dict[str, str], unmapped: list[str]
) -> tuple[dict[str, str], list[dict[str, Any]]]:
    """Fixed env (port exports, STEAM_ID and the like) and the user's variables."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(src, "environment", "must be an object of NAME: default (null: required)")
    env = {k: v for k, v in exported.items() if k not in raw}  # the recipe's own key wins
    variables: list[dict[str, Any]] = []
    used: set[str] = set()
    for key, value in raw.items():
        field = f"environment.{key}"
        if not re.match(ENV_NAME, str(key)):
            raise _fail(src, field, "is not a valid environment variable name")
        secret = bool(SECRET_ENV.search(key))
        if key.upper() in FIXED_ENV and value is not None:
            env[key] = _text(value)
            continue
        entry: dict[str, Any] = {"name": _variable_name(key, used), "env": key}
        if value is None:
            entry["required"] = True
            if key.upper() in FIXED_ENV:
                unmapped.append(
                    f"{field}: left empty by the recipe (the original passes the text 'None'); "
                    "asked for at create"
                )
                entry["create_only"] = True
        else:
            text = _text(value)
            entry["default"] = text
            if not secret and re.fullmatch(r"-?[1-9][0-9]{0,17}|0", text):
                entry["type"] = "int"  # coerced back to the same text
            elif not secret and text in ("true", "false"):
                entry["type"] = "bool"
        if secret:
            entry["secret"] = True
        variables.append(entry)
    return env, variables


def _volumes(
    src: Path, raw: Any, unmapped: list[str]
) -> tuple[list[dict[str, Any]], dict[str, str], bool]:
    """Plan volumes, the volume each recipe folder lands in, and whether paths were shared."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise _fail(src, "volumes", 'must be an object of {"~!/folder": "/container/path"}')
    by_path: dict[str, list[str]] = {}
    for source, target in raw.items():
        field = f"volumes.{source}"
        if not isinstance(target, str) or not target.startswith("/") or ".." in target.split("/"):
            raise _fail(src, field, "must be an absolute container path without '..'")
        if posixpath.normpath(target) == "/":
            raise _fail(src, field, "cannot be mounted over /")
        by_path.setdefault(posixpath.normpath(target), []).append(str(source))
    volumes: list[dict[str, Any]] = []
    folders: dict[str, str] = {}  # recipe folder (X of ~!/X) -> plan volume name
    used: set[str] = set()
    shared = False
    for target, sources in by_path.items():
        folders_here = []
        for source in sources:
            if source.startswith(MARK):
                folders_here.append(source[len(MARK) :].strip("/"))
            else:
                unmapped.append(
                    f"volumes.{source}: a host path in the original; here a volume of its own"
                )
                folders_here.append(source.rstrip("/").rsplit("/", 1)[-1])
        name = _unique(_slug(folders_here[0], f"data{len(volumes)}"), used)
        for folder in folders_here:
            folders[folder] = name
        if len(sources) > 1:
            shared = True
            unmapped.append(
                f"volumes: {' and '.join(sources)} share {target}; imported as one volume "
                f"'{name}' (the original's duplicate mount point is refused by Docker)"
            )
        # A volume that shares its path with world data is backed up whatever its name.
        backup = not all(_slug(f, "") in NOT_BACKED_UP for f in folders_here)
        volumes.append({"name": name, "path": target, "backup": backup})
    return volumes, folders, shared


def _read_text(path: Path) -> str | None:
    try:
        if path.stat().st_size > FILE_MAX:
            return None
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _files(
    folder: Path, folders: dict[str, str], volumes: list[dict[str, Any]], raw_files: Any,
    unmapped: list[str],
) -> list[dict[str, Any]]:  # fmt: skip
    """The recipe's files in the volumes the original mounts them in, as `files:` entries."""
    out: list[dict[str, Any]] = []
    for sub, volume in sorted(folders.items()):
        root = folder / sub
        if not sub or not root.is_dir() or root.is_symlink():
            continue
        actions = sub == "actions"
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            rel = path.relative_to(root).as_posix()
            content = _read_text(path)
            if content is None:
                unmapped.append(f"{sub}/{rel}: not a text file under {FILE_MAX // 1024} KB; "
                                f"copy it into volume '{volume}' yourself")  # fmt: skip
                continue
            executable = actions or bool(path.stat().st_mode & stat.S_IXUSR)
            out.append(
                {
                    "path": rel,
                    "volume": volume,
                    "content": content,
                    "template": False,  # scripts full of ${...}: written as they are
                    "mode": "0755" if executable else "0644",
                    # The recipe's scripts are the recipe's: a new import replaces them at the
                    # next start. Other folders seed data the game then owns.
                    "when": "always" if actions else "missing",
                }
            )
    if isinstance(raw_files, dict):
        for source, target in raw_files.items():
            rel_source = str(source).removeprefix(MARK).strip("/")
            file = folder / rel_source
            if not file.resolve().is_relative_to(folder.resolve()):
                # A recipe must not bring the importing machine's own files into its plan.
                unmapped.append(f"files.{source}: not inside the recipe's folder; not read")
                continue
            placed = _place(str(target), volumes) if isinstance(target, str) else None
            content = _read_text(file) if file.is_file() else None
            if content is not None and placed is not None:
                out.append({"path": placed[1], "volume": placed[0], "content": content,
                            "template": False, "mode": "0644", "when": "always"})  # fmt: skip
            elif file.exists():
                unmapped.append(f"files.{source}: {target} is in no volume of the plan")
            else:
                unmapped.append(
                    f"files.{source}: mounted at {target} by the original only once someone "
                    "uploads it; put that file into the volume yourself"
                )
    elif raw_files is not None:
        unmapped.append("files: not an object")
    return out


def _place(target: str, volumes: list[dict[str, Any]]) -> tuple[str, str] | None:
    """The (volume, relative path) holding container path `target`: the deepest volume."""
    best: tuple[str, str] | None = None
    depth = -1
    for v in volumes:
        base = v["path"].rstrip("/")
        if target.startswith(base + "/") and base.count("/") > depth:
            best, depth = (v["name"], target[len(base) + 1 :]), base.count("/")
    return best


def convert_peon(
    path: Path, *, image: str | None = None, name: str | None = None
) -> tuple[dict[str, Any], list[str], bool, list[str]]:
    """The war plan (as data, not yet validated) for a recipe, what was not mapped, whether
    it is untested, and header lines for the written YAML."""
    src, folder = _locate(path)
    try:
        raw = json.loads(src.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _fail(src, "", "does not exist (a PEON recipe is a folder with plan.json)") from None
    except OSError as e:
        raise _fail(src, "", f"cannot be read ({e.strerror})") from None
    except UnicodeDecodeError:
        raise _fail(src, "", "is not UTF-8 text") from None
    except json.JSONDecodeError as e:
        raise _fail(src, f"line {e.lineno}", e.msg) from None
    if not isinstance(raw, dict):
        raise _fail(src, "(top level)", "must be a JSON object with metadata, ports, ...")
    meta = raw.get("metadata")
    if not isinstance(meta, dict):
        raise _fail(src, "metadata", "must be an object (game_uid, image, ...)")
    if image is None and not meta.get("image"):
        raise _fail(src, "metadata.image", "is required to import a plan (or pass --image)")
    unmapped: list[str] = []
    uid = str(meta.get("game_uid") or folder.name or src.stem)
    plan_name = name if name is not None else _slug(uid, "imported")
    version = str(meta.get("version") or "")
    description = str(meta.get("description") or f"A PEON game server for {uid}.")
    out: dict[str, Any] = {
        "name": plan_name,
        "title": str(meta.get("title") or "").strip() or _title(folder, uid),
        "description": description,
        "image": image or str(meta["image"]),
    }
    # hostname, warcamp, server_name, mode: the original's container naming and which image
    # family it is; PEON names its containers itself and the image says the rest.
    known = {"game_uid", "image", "title", "description", "version", "hostname", "warcamp",
             "server_name", "mode"}  # fmt: skip
    unmapped += [f"metadata.{k}: not used" for k in sorted(set(meta) - known)]
    ports, exported = _ports(src, raw.get("ports"), unmapped)
    env, variables = _environment(src, raw.get("environment"), exported, unmapped)
    volumes, folders, shared = _volumes(src, raw.get("volumes"), unmapped)
    files = _files(folder, folders, volumes, raw.get("files"), unmapped)
    starts = any(f["volume"] == folders.get("actions") and f["path"] == "server_start"
                 for f in files)  # fmt: skip
    if str(out["image"]).startswith("umlatt/steamcmd") and not starts:
        # The PEON images' entrypoint runs /actions/server_start (peon-wartable
        # containers/steamcmd/init/entrypoint); without it the game never starts.
        unmapped.append("actions/server_start: missing; the image starts the game with it")
    for key in ("ports", "env", "variables", "volumes", "files"):
        value = {"ports": ports, "env": env, "variables": variables, "volumes": volumes,
                 "files": files}[key]  # fmt: skip
        if value:
            out[key] = value
    out["user"] = PEON_USER
    unmapped += [f"{k}: not used" for k in sorted(set(raw) - {"metadata", "ports",
                 "environment", "volumes", "files"})]  # fmt: skip
    untested = "untested" in version.lower() or shared
    header = [f"Imported from the PEON recipe {folder.name}/ ({src.name}, version "
              f"{version or 'unknown'}) by `peon warplan import`."]  # fmt: skip
    if untested:
        header.append("UNTESTED: the recipe is a scaffold nobody has run; check it first.")
    if unmapped:
        header += ["", "Not mapped:", *(f"- {item}" for item in unmapped)]
    return out, unmapped, untested, header


def import_peon(path: Path, *, image: str | None = None, name: str | None = None) -> ImportResult:
    """Convert a PEON recipe (its folder, or its plan.json) into a validated war plan."""
    src, _ = _locate(path)
    if name is not None and not re.match(SLUG, name):
        raise _fail(src, "--name", "use 1-32 characters from a-z, 0-9 and '-'")
    data, unmapped, untested, header = convert_peon(path, image=image, name=name)
    try:
        plan = parse_warplan(data, str(src))
    except WarplanError as e:
        # A converted field that still does not validate: name it as the plan calls it (a
        # cross-check's reason starts with its field: "volumes (path): duplicate ...").
        field, reason = e.field, e.reason
        if field in ("", "(top level)"):
            head, sep, rest = reason.partition(": ")
            field, reason = (head, rest) if sep else ("(converted plan)", reason)
        raise _fail(src, field, reason) from None
    return ImportResult(
        plan=plan, yaml_text=dump_imported(plan, header), unmapped=unmapped, untested=untested
    )
