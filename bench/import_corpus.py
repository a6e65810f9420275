"""Benchmark: import a whole collection of recipes (PEON recipes, Pterodactyl eggs) as war plans.

    .venv/bin/python bench/import_corpus.py DIR [--orc PEON_ORC] [--show N]

DIR is a folder holding recipes at any depth (a PEON recipe is a folder with plan.json; an egg
is a JSON file); a bare git directory (the fetch tool's mirror) is read at its HEAD. Each is
recognised with bot.importers.detect and imported with bot.importers.import_file, as
`peon warplan import` does. Printed per format: found, imported, validated (the YAML written
loads back as the same plan, as `peon warplan validate` reads it), untested, and refused by
reason.

--orc PEON_ORC (a checkout or bare git directory of the-peon-project/peon-orc): for every
PEON recipe, the original orchestrator's own code (app/modules/plans.py create_new_warcamp,
run from that checkout in a subprocess: bench/peon_orc_compose.py) writes the
docker-compose.yml it would run; the imported plan is compared with it on ports and
protocols (host:container/proto), environment (each null setting given the same value on
both sides), mounts (container path and the recipe folder behind it), the files the
original copies into the mounted folders (path and SHA-256), and the user. The baseline of
the timing is the original's own create of the same recipes in the same run.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import json
import os
import platform
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from bot.errors import WarplanError  # noqa: E402
from bot.importers import ImportResult, detect, import_file  # noqa: E402
from bot.warplans import WarPlan, load_warplan, render_environment, resolve_variables  # noqa: E402

SERVER = "w1"  # the server (the original's warcamp) both sides create
ASPECTS = ("ports", "env", "mounts", "files", "user")


def machine() -> str:
    model = platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores, {model}, Python {platform.python_version()}"


def is_git_dir(path: Path) -> bool:
    return (path / "HEAD").is_file() and (path / "objects").is_dir()


def checkout(path: Path, scratch: Path, name: str) -> Path:
    """A folder with the files of `path`: itself, or its HEAD when it is a bare git dir."""
    if not is_git_dir(path):
        return path
    target = scratch / name
    target.mkdir()
    archive = subprocess.run(
        ["git", "--git-dir", str(path), "archive", "HEAD"], capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return target


def find_recipes(root: Path) -> list[tuple[Path, str]]:
    """Every recipe under root, with its format; a PEON recipe folder is not searched further."""
    found: list[tuple[Path, str]] = []
    for dirpath, dirnames, filenames in os.walk(root):
        here = Path(dirpath)
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        kind = detect(here) if "plan.json" in filenames else None
        if kind is not None:
            found.append((here, kind))
            dirnames[:] = []
            continue
        for name in sorted(filenames):
            if name.endswith(".json") and name != "plans.json":
                kind = detect(here / name)
                if kind is not None:
                    found.append((here / name, kind))
    return found


def reason_of(e: WarplanError) -> str:
    """A refusal with the recipe's own names taken out, to count alike refusals together."""
    field = re.sub(r"\[\d+\]", "[]", e.field)
    field = re.sub(r"^(environment|volumes|files|metadata)\..*", r"\1.*", field)
    reason = re.sub(r"'[^']*'|\"[^\"]*\"|\b\d+\b", "…", e.reason)
    return f"{field}: {reason}" if field else reason


def unmapped_kind(line: str) -> str:
    """An unmapped item with the recipe's own names taken out (eggs: files, variables, keys)."""
    line = re.sub(r"^(config\.files|variables|features)\.[^:]*", r"\1.*", line)
    line = re.sub(r": key [^:]*:", ": key …:", line)
    line = re.sub(r"also .*; choose", "also …; choose", line)
    line = re.sub(r"\{\{[^}]*\}\}|'[^']*'|\b\d+\b", "…", line)
    return line


def validates(result: ImportResult, scratch: Path) -> bool:
    path = scratch / f"{result.plan.name}.yaml"
    path.write_text(result.yaml_text, encoding="utf-8")
    try:
        return load_warplan(path) == result.plan
    except WarplanError:
        return False
    finally:
        path.unlink()


# ---------------------------------------------------------------------------------------------
# Comparison with the original orchestrator


def setting_values(recipe: Path) -> dict[str, str]:
    """A value for each setting the recipe leaves null (what a user types at create)."""
    raw = json.loads((recipe / "plan.json").read_text(encoding="utf-8"))
    env = raw.get("environment") or {}
    return {k: f"v-{k}" for k, v in env.items() if v is None}


def ours(plan: WarPlan, given: dict[str, str]) -> dict[str, Any]:
    by_env = {v.env: v.name for v in plan.variables}
    values = resolve_variables(plan, {by_env[k]: v for k, v in given.items()}, SERVER)
    host_ports = {p.name: p.host for p in plan.ports if isinstance(p.host, int)}
    files: dict[str, dict[str, str]] = collections.defaultdict(dict)
    for f in getattr(plan, "files", None) or []:
        content = f.content or ""
        files[f.volume or plan.volumes[0].name][f.path] = hashlib.sha256(
            content.encode()
        ).hexdigest()
    return {
        "ports": sorted(f"{p.host}:{p.container}/{p.protocol}" for p in plan.ports),
        "env": render_environment(plan, values, SERVER, host_ports),
        "mounts": sorted(f"{v.name}:{v.path.rstrip('/')}" for v in plan.volumes),
        "files": dict(files),
        "user": plan.user,
    }


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9-]+", "-", text.lower()).strip("-")


def theirs(compose: dict[str, Any], folders: dict[str, dict[str, str]]) -> dict[str, Any]:
    """The original's docker-compose.yml in the same terms: mounts by the folder's slug, one
    per container path (Docker refuses a duplicate mount point; the first source names it)."""
    service = compose["services"]["server"]
    env: dict[str, str] = {}
    for item in service.get("environment") or []:
        key, _, value = item.partition("=")
        env[key] = value  # compose: a repeated key's last value wins
    mounts: dict[str, str] = {}
    mounted: dict[str, str] = {}  # folder -> mount name
    prefix = "/peon-host/servers/"
    for item in service.get("volumes") or []:
        source, _, target = item.rpartition(":")
        target = target.rstrip("/")
        folder = source.split("/", 5)[-1] if source.startswith(prefix) else source
        if target not in mounts:
            mounts[target] = _slug(folder)
        mounted[folder] = mounts[target]
    files: dict[str, dict[str, str]] = {}
    for folder, tree in folders.items():
        if folder in mounted and tree:
            files.setdefault(mounted[folder], {}).update(tree)
    return {
        "ports": sorted(set(service.get("ports") or [])),
        "env": env,
        "mounts": sorted(f"{name}:{path}" for path, name in mounts.items()),
        "files": files,
        "user": service.get("user"),
    }


def compare(mine: dict[str, Any], orig: dict[str, Any]) -> tuple[dict[str, bool], bool]:
    """Per aspect whether both agree, and whether the only difference is a setting the
    original never asks for and passes as the text 'None' (a scaffold's STEAM_ID: PEON asks)."""
    same = {a: mine[a] == orig[a] for a in ASPECTS}
    none_only = False
    if not same["env"]:
        diff = {k for k in mine["env"].keys() | orig["env"].keys()
                if mine["env"].get(k) != orig["env"].get(k)}  # fmt: skip
        none_only = all(orig["env"].get(k) == "None" and mine["env"].get(k) == f"v-{k}"
                        for k in diff)  # fmt: skip
    return same, none_only


def run_orc(orc: Path, recipes: Path, peon: list[Path], scratch: Path) -> tuple[dict, float]:
    requests = {p.name: setting_values(p) for p in peon}
    script = Path(__file__).with_name("peon_orc_compose.py")
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, str(script), str(orc), str(recipes), str(scratch / "orc")],
        input=json.dumps(requests), capture_output=True, text=True, check=False,
    )  # fmt: skip
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        raise SystemExit(f"the original's code failed to run:\n{proc.stderr[-2000:]}")
    return json.loads(proc.stdout), elapsed


# ---------------------------------------------------------------------------------------------


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("dir", type=Path)
    ap.add_argument("--orc", type=Path, help="peon-orc checkout: compare with what it produces")
    ap.add_argument("--show", type=int, default=5, help="list this many refusals/mismatches")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="peon-corpus-") as tmp:
        scratch = Path(tmp)
        root = checkout(args.dir.resolve(), scratch, "recipes")
        found = find_recipes(root)
        print(f"machine: {machine()}")
        print(f"corpus: {args.dir}")
        counts: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        refused: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        examples: dict[str, list[str]] = collections.defaultdict(list)
        unmapped: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        imported: dict[Path, ImportResult] = {}
        start = time.perf_counter()
        seconds: dict[str, float] = collections.defaultdict(float)
        for path, kind in found:
            c = counts[kind]
            c["found"] += 1
            began = time.perf_counter()
            try:
                result = import_file(path)
            except WarplanError as e:
                refused[kind][reason_of(e)] += 1
                if len(examples[kind]) < args.show:
                    examples[kind].append(str(e))
                continue
            seconds[kind] += time.perf_counter() - began
            imported[path] = result
            c["imported"] += 1
            c["validated"] += validates(result, scratch)
            c["untested"] += result.untested
            c["with unmapped items"] += bool(result.unmapped)
            unmapped[kind].update({unmapped_kind(u) for u in result.unmapped})
        ours_seconds = time.perf_counter() - start
        for kind, c in sorted(counts.items()):
            n = c["found"]
            print(f"\n[{kind}] found {n}, imported {c['imported']} ({c['imported'] / n:.0%}), "
                  f"validated {c['validated']}, untested {c['untested']}, "
                  f"with unmapped items {c['with unmapped items']}, "
                  f"refused {n - c['imported']}")  # fmt: skip
            for reason, k in refused[kind].most_common():
                print(f"  refused {k:4}: {reason}")
            for line in examples[kind]:
                print(f"    e.g. {line}")
            for line, k in unmapped[kind].most_common(args.show):
                print(f"  unmapped in {k:4}: {line}")
        print(f"\nimport time: {ours_seconds:.2f} s for {len(found)} "
              f"({1000 * ours_seconds / max(len(found), 1):.1f} ms each)")  # fmt: skip
        eggs = [p for p, kind in found if kind == "egg"]
        if eggs:
            # Baseline: only reading and parsing the same eggs, the floor of any importer.
            start = time.perf_counter()
            for path in eggs:
                json.loads(path.read_text(encoding="utf-8"))
            floor = time.perf_counter() - start
            ratio = seconds["egg"] / max(floor, 1e-9)
            print(f"eggs: import {seconds['egg']:.2f} s; reading and parsing their JSON alone "
                  f"{floor:.3f} s; ratio {ratio:.0f}")  # fmt: skip
        peon = [p for p, kind in found if kind == "peon" and p.is_dir()]
        if args.orc is None or not peon:
            return 0
        orc = checkout(args.orc.resolve(), scratch, "orc-checkout")
        recipes_dirs = {p.parent for p in peon}
        if len(recipes_dirs) != 1:
            print("\n--orc needs the PEON recipes side by side in one folder; skipped")
            return 0
        originals, orc_seconds = run_orc(orc, recipes_dirs.pop(), peon, scratch)
        agree = collections.Counter[str]()
        mismatches: list[str] = []
        both = 0
        for recipe in peon:
            orig = originals.get(recipe.name, {})
            if recipe not in imported or "compose" not in orig:
                if "compose" not in orig:
                    agree["original failed"] += 1
                    if len(mismatches) < args.show:
                        mismatches.append(f"{recipe.name}: the original: {orig.get('info')}")
                continue
            both += 1
            binds = orig["compose"]["services"]["server"].get("volumes") or []
            targets = [v.rpartition(":")[2].rstrip("/") for v in binds]
            agree["duplicate mount point"] += len(targets) != len(set(targets))
            mine = ours(imported[recipe].plan, setting_values(recipe))
            same, none_only = compare(mine, theirs(orig["compose"], orig.get("folders", {})))

            for aspect in ASPECTS:
                agree[aspect] += same[aspect] or (aspect == "env" and none_only)
            agree["env exact"] += same["env"]
            agree["env none"] += none_only
            agree["all"] += all(same[a] or (a == "env" and none_only) for a in ASPECTS)
            orig_view = theirs(orig["compose"], orig.get("folders", {}))
            for aspect in ASPECTS:
                ok = same[aspect] or (aspect == "env" and none_only)
                if not ok and len(mismatches) < args.show:
                    mismatches.append(
                        f"{recipe.name}: {aspect}: ours {mine[aspect]} / "
                        f"original {orig_view[aspect]}"
                    )
        print(f"\n[peon vs the original orchestrator] {len(peon)} recipes, both produced {both}; "
              f"the original failed on {agree['original failed']}")  # fmt: skip
        for aspect in ASPECTS:
            print(f"  {aspect:6} equal: {agree[aspect]}/{both}")
        print(f"  env exactly equal: {agree['env exact']}/{both}; differing only where the "
              "original passes the text 'None' for a null setting it never asks for (PEON "
              f"asks for it at create): {agree['env none']}")  # fmt: skip
        print(f"  all five equal: {agree['all']}/{both}")
        print(f"  the original's compose file mounts two folders on one path (Docker refuses "
              f"it: 'Duplicate mount point'): {agree['duplicate mount point']}/{both}")  # fmt: skip
        for line in mismatches:
            print(f"    {line}")
        print(f"\ntiming: PEON import {ours_seconds:.2f} s vs the original's create "
              f"{orc_seconds:.2f} s (subprocess with its start-up) for {len(peon)} recipes; "
              f"ratio {ours_seconds / orc_seconds:.2f}")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
