"""Pterodactyl eggs (PTDL_v1, PTDL_v2) as war plans.

What an egg means is what Pterodactyl's Panel and Wings do with it; each mapping below names
where that was read (pterodactyl/wings f1c5bbd4, pterodactyl/panel 706db62c, parkervcp/yolks
716122d3):

- The server container gets STARTUP (the egg's startup line), SERVER_MEMORY (MiB), SERVER_IP,
  SERVER_PORT and TZ, then the egg's variables (wings server/server.go
  GetEnvironmentVariables; a variable cannot override those five). Every yolk's entrypoint
  turns `{{VAR}}` into `${VAR}` and evals STARTUP in /home/container (yolks
  */entrypoint.sh), so the plan passes STARTUP through and leaves the image's command alone.
- Data lives at /home/container (wings server/mounts.go); the installer container runs
  `ENTRYPOINT /mnt/install/install.sh` in the egg's installer image with the server directory
  at /mnt/server and the server's environment (wings server/install.go Execute).
- Each allocation is published on its own number, host and container, tcp and udp (wings
  environment/allocations.go Bindings): the plan's ports use `container: host` and a udp
  twin with `same_as`, so two servers of one egg get two numbers and each game announces
  the one players reach.
- `config.startup.done` is a substring of a log line, or a regex after `regex:` (wings
  remote/types.go OutputLineMatcher). `config.stop` is a console command, or after `^` a
  signal name (panel app/Services/Eggs/EggConfigurationService.php convertStopToNewFormat).
- `config.files` maps a file to a parser and `find` keys whose values may hold
  {{server.build.default.port}}, {{server.build.memory}}, {{env.X}}/{{server.build.env.X}},
  {{config.docker.interface}} (same service, matchAndReplaceKeys; wings parser/parser.go).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from bot.configfiles import key_problem
from bot.errors import WarplanError
from bot.importers import ImportResult, dump_imported
from bot.patterns import compile_pattern
from bot.warplans import ENV_NAME, SIGNALS, VAR_NAME, VariableSpec, parse_warplan

EGG_VERSIONS = ("PTDL_v1", "PTDL_v2")
HOME = "/home/container"  # wings server/mounts.go: every server's data directory
INSTALL_DIR = "/mnt/server"  # wings server/install.go: the server directory in the installer
# wings server/server.go: set by Wings itself; an egg variable of the same name is ignored.
WINGS_ENV = ("TZ", "STARTUP", "SERVER_MEMORY", "SERVER_IP", "SERVER_PORT")
RUN_AS = "1000:1000"
DEFAULT_MEMORY = "4g"  # eggs leave memory to the panel; SERVER_MEMORY must never be empty
READY_TIMEOUT = 900  # many yolks update the game (steamcmd) in the entrypoint, before `done`
INSTALL_TIMEOUT = 3600  # installers download whole games
STOP_GRACE = 60
FORMATS = {"properties": "properties", "ini": "ini", "json": "json", "yaml": "yaml",
           "yml": "yaml", "xml": "xml", "file": "lines"}  # fmt: skip
_SECRETISH = re.compile(r"PASS|_PW$|PWD|TOKEN|SECRET|GSLT|KEY$|AUTH|LICENSE", re.I)
_PORTISH = re.compile(r"(^|_)PORT$")
_PLACEHOLDER = re.compile(r"\{\{([\w.-]*)\}\}")


def import_egg(
    path: Path,
    *,
    image: str | None = None,
    name: str | None = None,
    memory: str = DEFAULT_MEMORY,
) -> ImportResult:
    """Convert an egg file. `image` chooses one of its docker_images (by label or reference)."""
    where = str(path)
    try:
        egg = json.loads(path.read_text(encoding="utf-8"))
    except OSError as e:
        raise WarplanError(where, "", f"cannot be read ({e.strerror})") from None
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise WarplanError(where, "", f"is not JSON ({e})") from None
    if not isinstance(egg, dict):
        raise WarplanError(where, "", "must be a JSON object (a Pterodactyl egg)")
    return _Converter(egg, where).convert(image=image, name=name, memory=memory)


class _Converter:
    def __init__(self, egg: dict[str, Any], where: str) -> None:
        self.egg = egg
        self.where = where
        self.unmapped: list[str] = []
        self.env: dict[str, str] = {}
        self.ports: list[dict[str, Any]] = []
        self.port_env: dict[str, str] = {}  # env name -> port name
        self.var_of_env: dict[str, str] = {}  # env name -> variable name

    def refuse(self, field: str, reason: str) -> WarplanError:
        return WarplanError(self.where, field, reason)

    def note(self, line: str) -> None:
        self.unmapped.append(line)

    # -----------------------------------------------------------------------------------------

    def convert(self, *, image: str | None, name: str | None, memory: str) -> ImportResult:
        egg = self.egg
        meta: dict[str, Any] = egg["meta"] if isinstance(egg.get("meta"), dict) else {}
        version = meta.get("version")
        if version not in EGG_VERSIONS:
            raise self.refuse(
                "meta.version", f"must be one of {', '.join(EGG_VERSIONS)} (got {version!r})"
            )
        title = str(egg.get("name") or "").strip() or Path(self.where).stem
        plan: dict[str, Any] = {
            "name": name or _slug(title),
            "title": title[:100],
            "description": _first_paragraph(str(egg.get("description") or "")),
            "image": self.image(image),
        }
        startup = str(egg.get("startup") or "").strip()
        if not startup:
            raise self.refuse("startup", "is empty, so the server would have nothing to run")
        self.ports = [
            {"name": "game", "container": "host", "description": "the egg's main allocation"},
            {"name": "game-udp", "container": "host", "protocol": "udp", "same_as": "game"},
        ]
        self.env = {
            "STARTUP": startup,
            "SERVER_PORT": "{port:game}",
            # Inside Docker's bridge the container binds all its addresses.
            "SERVER_IP": "0.0.0.0",  # noqa: S104
            "SERVER_MEMORY": "{memory}",
            "TZ": "UTC",
        }
        plan["variables"] = self.variables()
        plan["env"] = self.env
        plan["ports"] = self.ports
        plan["volumes"] = [{"name": "data", "path": HOME}]
        # Wings runs every egg's container as its own uid and chowns the server directory to
        # it before each boot (environment/docker/container.go Create, server/power.go); the
        # yolks' `container` user is 1000 (useradd/adduser in a base without other users).
        plan["user"] = RUN_AS
        plan["resources"] = {"memory": memory}
        config: dict[str, Any] = egg["config"] if isinstance(egg.get("config"), dict) else {}
        plan["ready"] = self.ready(config.get("startup"))
        plan["stop"] = self.stop(config.get("stop"))
        files = self.files(config.get("files"))
        if files:
            plan["files"] = files
        install = self.install(egg.get("scripts"))
        if install:
            plan["install"] = install
        for key in ("logs", "extends"):
            if config.get(key) not in (None, "", "{}", "[]", {}, []):
                self.note(f"config.{key}: not used by PEON")
        for feature in egg.get("features") or []:
            if feature == "eula" and self.eula(plan):
                continue
            self.note(f"features.{feature}: a Panel feature PEON does not have")
        if egg.get("file_denylist"):
            self.note("file_denylist: PEON offers no file manager to restrict")
        links = [u for u in (meta.get("update_url"),) if isinstance(u, str) and u]
        if links:
            plan["links"] = links
        plan = {k: v for k, v in plan.items() if v not in (None, [], {})}
        header = [f"Imported from the Pterodactyl egg {Path(self.where).name} ({version})."]
        result = parse_warplan(plan, self.where)
        header += [f"not mapped: {line}" for line in self.unmapped]
        return ImportResult(
            plan=result, yaml_text=dump_imported(result, header), unmapped=list(self.unmapped)
        )

    # -----------------------------------------------------------------------------------------

    def image(self, wanted: str | None) -> str:
        egg = self.egg
        images: dict[str, str] = {}
        raw = egg.get("docker_images")
        if isinstance(raw, dict):
            images = {str(k): str(v) for k, v in raw.items() if v}
        elif isinstance(raw, list):
            images = {str(v): str(v) for v in raw if v}
        if not images and isinstance(egg.get("image"), str) and egg["image"]:
            images = {egg["image"]: egg["image"]}  # PTDL_v1
        if not images and isinstance(egg.get("images"), list):
            images = {str(v): str(v) for v in egg["images"] if v}
        if not images:
            raise self.refuse("docker_images", "the egg names no image to run the server in")
        if wanted is None:
            # The Panel's new-server form lists them in order with the first selected
            # (panel public/themes/pterodactyl/js/admin/new-server.js).
            label, ref = next(iter(images.items()))
        else:
            match = [(k, v) for k, v in images.items() if wanted in (k, v, v.lstrip("~"))]
            if not match and re.fullmatch(r"[^\s]*[/:][^\s]*", wanted):
                self.note(f"docker_images: replaced by {wanted}")
                return wanted
            if not match:
                choices = ", ".join(f"'{k}'" for k in images)
                raise self.refuse("docker_images", f"has no image '{wanted}'; choose {choices}")
            label, ref = match[0]
        others = [f"{k} ({v})" if k != v else v for k, v in images.items() if k != label]
        if others:
            self.note(f"docker_images: also {', '.join(others)}; choose one with --image")
        # wings environment/docker/container.go: a leading '~' only marks a local image.
        return ref.strip().lstrip("~")

    # -----------------------------------------------------------------------------------------

    def variables(self) -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        used: set[str] = set()
        for i, raw in enumerate(self.egg.get("variables") or []):
            if not isinstance(raw, dict):
                self.note(f"variables[{i}]: not an object")
                continue
            env = str(raw.get("env_variable") or "").strip()
            label = str(raw.get("name") or env)
            if not re.fullmatch(ENV_NAME, env):
                self.note(f"variables.{label}: '{env}' is not an environment variable name")
                continue
            if env in WINGS_ENV:
                self.note(f"variables.{env}: Wings sets {env} itself and ignores the variable")
                continue
            if env in self.env or env in self.var_of_env:
                self.note(f"variables.{env}: set twice; the first one is kept")
                continue
            default = "" if raw.get("default_value") is None else str(raw["default_value"])
            rules = _rules(raw.get("rules"))
            editable = bool(raw.get("user_editable", True))
            viewable = bool(raw.get("user_viewable", True))
            if _PORTISH.search(env) and (_numeric(rules) or _int(default)):
                # An extra allocation in Pterodactyl: PEON allocates it like the main port.
                self.extra_port(env)
                continue
            if not editable:
                # Only the panel's admin may change it: the plan fixes the egg's value.
                self.env[env] = default
                continue
            var = _var_name(env, used)
            used.add(var)
            self.var_of_env[env] = var
            spec: dict[str, Any] = {"name": var, "env": env}
            desc = " ".join(str(raw.get("description") or "").split())
            spec["description"] = f"{label}: {desc}"[:300] if desc else label
            spec.update(self.typed(env, default, rules))
            if not viewable or _SECRETISH.search(env):
                spec["secret"] = True
            out.append(spec)
        return out

    def eula(self, plan: dict[str, Any]) -> bool:
        """The Panel asks the user to accept the EULA and writes eula.txt with eula=true
        (panel resources/scripts/components/server/features/eula/EulaModalFeature.tsx): here
        a required variable, written to eula.txt before each start."""
        files = plan.setdefault("files", [])
        if any(f["path"] == "eula.txt" for f in files):
            return False
        name = _var_name("eula", {v["name"] for v in plan["variables"]})
        plan["variables"].append(
            {
                "name": name,
                "description": "Accept the Minecraft EULA (https://www.minecraft.net/eula): "
                "true; the server does not start without it.",
                "type": "choice",
                "choices": ["true", "false"],
                "required": True,
            }
        )
        files.append({"path": "eula.txt", "volume": "data", "content": f"eula={{var:{name}}}\n"})
        return True

    def extra_port(self, env: str) -> None:
        base = _slug(env.removesuffix("_PORT").removesuffix("PORT") or "port")[:24] or "port"
        taken = {p["name"] for p in self.ports}
        name, n = base, 2
        while name in taken or f"{name}-udp" in taken:
            name, n = f"{base}-{n}", n + 1
        self.ports.append({"name": name, "container": "host", "description": env})
        self.ports.append(
            {"name": f"{name}-udp", "container": "host", "protocol": "udp", "same_as": name}
        )
        self.env[env] = f"{{port:{name}}}"
        self.port_env[env] = name
        self.note(f"variables.{env}: an extra port; PEON allocates it (port '{name}', tcp+udp)")

    def typed(self, env: str, default: str, rules: list[str]) -> dict[str, Any]:
        """The variable's type and bounds from its Laravel rules; the default must fit."""
        names = {r.split(":", 1)[0] for r in rules}
        args = {r.split(":", 1)[0]: r.split(":", 1)[1] for r in rules if ":" in r}
        nullable = "nullable" in names or "required" not in names
        out: dict[str, Any] = {}
        if "required" in names:
            out["required"] = True
        if "in" in args:
            choices = [c.strip() for c in _split_in(args["in"])]
            if nullable and "" not in choices and default == "":
                out["default"] = None
            elif default not in choices and default != "":
                # The egg runs with its default in Pterodactyl, whatever its rule says.
                self.note(f"variables.{env}: its default '{default}' is not in in:; added")
                choices.append(default)
            out.update(type="choice", choices=choices)
        elif "boolean" in names:
            # Eggs' scripts test the text they set ("1", "true"); PEON's bool would rewrite it.
            truth = ["true", "false"] if default.lower() in ("true", "false") else ["1", "0"]
            if default.lower() in ("true", "false"):
                default = default.lower()
            out.update(type="choice", choices=truth)
        elif names & {"integer", "int"} or ("numeric" in names and _int(default)):
            out["type"] = "int"
            for rule, key in (("min", "min"), ("max", "max")):
                if rule in args and _int(args[rule]):
                    out[key] = int(args[rule])
            if "between" in args:
                lo, _, hi = args["between"].partition(",")
                if _int(lo) and _int(hi):
                    out.update(min=int(lo), max=int(hi))
            if "digits_between" in args:
                lo, _, hi = args["digits_between"].partition(",")
                if _int(hi):
                    out["max"] = 10 ** int(hi) - 1
            if "numeric" in names and not names & {"integer", "int"}:
                self.note(f"variables.{env}: numeric (decimals) kept as a whole number")
        else:
            pattern = self.pattern(env, args, names)
            if pattern is not None:
                out["pattern"] = f"|{pattern}" if nullable and pattern else pattern
        if out.get("type") in ("int", "choice") and default == "":
            out.setdefault("default", None)
        out.setdefault("default", default)
        if out["default"] is None:
            del out["default"]
        return self.fit(env, out)

    def pattern(self, env: str, args: dict[str, str], names: set[str]) -> str | None:
        if "regex" in args:
            regex = _php_regex(args["regex"])
            if regex is None:
                self.note(f"variables.{env}: rule regex:{args['regex']} cannot run in RE2")
                return None
            # Laravel's regex rule searches; a plan's pattern must match the whole value.
            return f".*(?:{regex}).*"
        if "digits_between" in args:
            fewest, _, most = args["digits_between"].partition(",")
            if _int(fewest) and _int(most):
                return rf"\d{{{fewest},{most}}}"
        if "digits" in args and _int(args["digits"]):
            return rf"\d{{{args['digits']}}}"
        if "alpha_dash" in names:
            return r"[A-Za-z0-9_-]*"
        if "alpha_num" in names:
            return r"[A-Za-z0-9]*"
        if "url" in names:
            return r"[A-Za-z][A-Za-z0-9+.-]*://\S+"
        lo: str | None = args["min"] if _int(args.get("min", "")) else None
        hi: str | None = args["max"] if _int(args.get("max", "")) else None
        if "size" in args and _int(args["size"]):
            lo = hi = args["size"]
        if lo is not None or hi is not None:
            # The plan's values are one line; Laravel's string max/min count characters.
            return f".{{{lo or 0},{hi or ''}}}"
        return None

    def fit(self, env: str, spec: dict[str, Any]) -> dict[str, Any]:
        """Drop what the egg's own default breaks: the egg runs with it in Pterodactyl."""
        probe = {"name": "probe", "env": env, **spec}
        for drop in ("pattern", "min", "max", "default"):
            try:
                VariableSpec.model_validate(probe)
                break
            except ValueError:
                if drop in spec:
                    self.note(f"variables.{env}: its default does not fit its rules; {drop} "
                              "dropped")  # fmt: skip
                    spec.pop(drop)
                    probe.pop(drop)
        return spec

    # -----------------------------------------------------------------------------------------

    def ready(self, raw: Any) -> dict[str, Any]:
        startup = _json_field(raw)
        done = startup.get("done") if isinstance(startup, dict) else None
        lines = [done] if isinstance(done, str) else list(done or [])
        regexes: list[str] = []
        for line in lines:
            if not isinstance(line, str) or not line:
                continue
            if line.startswith("regex:") and len(line) > 6:
                regex = line[6:]
                if _php_regex(f"/{regex}/") is None:
                    self.note(f"config.startup.done: regex {regex} cannot run in RE2")
                    continue
                regexes.append(regex)
            else:
                regexes.append(_escape(line))
        if not regexes:
            self.note("config.startup.done: none; the server counts as up two seconds after start")
            return {"timeout": READY_TIMEOUT}
        log = regexes[0] if len(regexes) == 1 else "|".join(f"(?:{r})" for r in regexes)
        return {"log": log, "timeout": READY_TIMEOUT}

    def stop(self, raw: Any) -> dict[str, Any]:
        text = str(raw or "").strip()
        if not text:
            self.note("config.stop: none; PEON sends SIGTERM")
            return {"signal": "SIGTERM", "grace": STOP_GRACE}
        if not text.startswith("^"):
            return {"console": text, "grace": STOP_GRACE}
        name = text.lstrip("^").upper()
        if name == "C":
            # Ctrl+C (and '^^C', press it twice): SIGINT, which yolks images' tini passes on.
            # Wings itself only knows SIGINT/SIGTERM/SIGABRT names and kills for the rest
            # (environment/docker/power.go Stop); PEON keeps the graceful intent.
            if text.count("^") > 1:
                self.note("config.stop: ^^C (Ctrl+C twice) becomes one SIGINT, then the kill")
            return {"signal": "SIGINT", "grace": STOP_GRACE}
        signal = name if name.startswith("SIG") else f"SIG{name}"
        if signal in SIGNALS:
            return {"signal": signal, "grace": STOP_GRACE}
        self.note(f"config.stop: {text} is no signal PEON knows; PEON sends SIGTERM")
        return {"signal": "SIGTERM", "grace": STOP_GRACE}

    # -----------------------------------------------------------------------------------------

    def files(self, raw: Any) -> list[dict[str, Any]]:
        files = _json_field(raw)
        if not isinstance(files, dict):
            if files not in (None, [], ""):
                self.note("config.files: not an object of files")
            return []
        out: list[dict[str, Any]] = []
        for path, spec in files.items():
            where = f"config.files.{path}"
            if not isinstance(spec, dict) or not isinstance(spec.get("find"), dict):
                self.note(f"{where}: has no 'find' keys")
                continue
            parser = str(spec.get("parser") or "")
            fmt = FORMATS.get(parser)
            if fmt is None:
                self.note(f"{where}: parser '{parser}' is not one Wings knows")
                continue
            rel = path.strip().lstrip("/").removeprefix("./")
            if not rel or ".." in rel.split("/"):
                self.note(f"{where}: the path leaves the server's directory")
                continue
            values: dict[str, str | int | float | bool] = {}
            for key, value in spec["find"].items():
                problem = key_problem(fmt, key)
                if problem is not None:
                    self.note(f"{where}: key {key}: {problem}")
                    continue
                if isinstance(value, dict | list):
                    self.note(f"{where}: key {key}: conditional replacements are not mapped")
                    continue
                if isinstance(value, bool | int | float):
                    values[key] = value  # typed, as Wings writes a JSON boolean or number
                    continue
                text = "" if value is None else str(value)
                filled = self.placeholders(text, f"{where}: key {key}")
                if filled is not None:
                    values[key] = filled
            if values:
                out.append({"path": rel, "volume": "data", "format": fmt, "set": values})
        return out

    def placeholders(self, text: str, where: str) -> str | None:
        """Panel placeholders as PEON templates; None when one has no counterpart."""
        # PEON templates are single braces: a literal one in the egg stays as it is, except
        # the forms PEON would read as its own.
        problem: list[str] = []

        def sub(m: re.Match[str]) -> str:
            key = m.group(1)
            key = re.sub(r"^server\.build\.env\.", "env.", key)
            key = re.sub(r"^server\.allocations\.default\.", "server.build.default.", key)
            if key in ("server.build.default.port", "env.SERVER_PORT"):
                return "{port:game}"
            if key in ("server.build.default.ip", "env.SERVER_IP"):
                return "0.0.0.0"  # noqa: S104 - the container binds all its addresses
            if key in ("server.build.memory", "env.SERVER_MEMORY"):
                return "{memory}"
            if key.startswith("env."):
                env = key[4:]
                if env in self.port_env:
                    return f"{{port:{self.port_env[env]}}}"
                if env in self.var_of_env:
                    return f"{{var:{self.var_of_env[env]}}}"
                if env in self.env:
                    return f"{{env:{env}}}"
                problem.append(f"{{{{{m.group(1)}}}}} names no variable of the egg")
                return m.group(0)
            if key.startswith(("server.", "config.")):
                problem.append(f"{{{{{m.group(1)}}}}} has no PEON counterpart")
                return m.group(0)
            return m.group(0)  # Wings leaves other {{...}} as written

        filled = _PLACEHOLDER.sub(sub, text)
        if problem:
            self.note(f"{where}: {problem[0]}")
            return None
        return filled

    # -----------------------------------------------------------------------------------------

    def install(self, raw: Any) -> dict[str, Any] | None:
        inst = raw.get("installation") if isinstance(raw, dict) else None
        if not isinstance(inst, dict):
            return None
        script = str(inst.get("script") or "").replace("\r\n", "\n").strip()
        if not script:
            return None
        image = str(inst.get("container") or "").strip().lstrip("~")
        if not image:
            self.note("scripts.installation: names no container image; the install is left out")
            return None
        entrypoint = str(inst.get("entrypoint") or "bash").strip() or "bash"
        # What the installer (root) writes is handed to the plan's user (RUN_AS) after the
        # script, by the install step itself (bot/installs.py installer_command), as Wings'
        # chown before each boot does: the script is the egg's, unchanged.
        return {
            "image": image,
            "entrypoint": entrypoint,
            "script": script + "\n",
            "mounts": {"data": INSTALL_DIR},
            "timeout": INSTALL_TIMEOUT,
        }


# ---------------------------------------------------------------------------------------------
# Helpers


def _slug(text: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")[:32].strip("-")
    return slug or "egg"


def _var_name(env: str, used: set[str]) -> str:
    base = re.sub(r"[^a-z0-9_]+", "_", env.lower()).strip("_") or "var"
    if not base[0].isalpha():
        base = f"v_{base}"
    base = base[:44]
    name, n = base, 2
    while name in used or not re.fullmatch(VAR_NAME, name):
        name, n = f"{base}_{n}", n + 1
    return name


def _first_paragraph(text: str) -> str:
    para = " ".join(text.strip().split("\n\n", 1)[0].split())
    return para if len(para) <= 400 else para[:397].rstrip() + "..."


def _rules(raw: Any) -> list[str]:
    # Laravel splits a rule string on every '|' (a regex holding one must be given as a
    # list), so the egg means exactly these pieces.
    items = [str(r) for r in raw] if isinstance(raw, list) else str(raw or "").split("|")
    return [r.strip() for r in items if r.strip()]


def _escape(text: str) -> str:
    """A literal as a regex, escaping only what is special (re.escape also escapes spaces)."""
    return re.sub(r"([\\.^$*+?{}\[\]|()])", r"\\\1", text)


def _split_in(text: str) -> list[str]:
    return [c.strip().strip('"') for c in text.split(",")]


def _numeric(rules: list[str]) -> bool:
    names = {r.split(":", 1)[0] for r in rules}
    return bool(names & {"integer", "int", "numeric", "digits_between", "digits", "between"})


def _int(text: str) -> bool:
    return bool(re.fullmatch(r"-?\d+", text.strip())) if text else False


def _php_regex(text: str) -> str | None:
    """A PHP preg pattern (/.../flags) as a pattern Python and RE2 both run, or None."""
    text = text.strip()
    if len(text) < 2:
        return None
    delim = text[0]
    closing = {"(": ")", "{": "}", "[": "]", "<": ">"}.get(delim, delim)
    end = text.rfind(closing)
    if end <= 0:
        return None
    body, flags = text[1:end], text[end + 1 :]
    inline = "".join(f for f in flags if f in "imsx")
    pattern = f"(?{inline}){body}" if inline else body
    try:
        re.compile(pattern)
        compile_pattern(pattern)  # plans' regexes run with RE2
    except (re.error, ValueError):
        return None
    return pattern


def _json_field(raw: Any) -> Any:
    """Eggs store config.startup and config.files as JSON text (sometimes as objects)."""
    if isinstance(raw, str):
        if not raw.strip():
            return None
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return None
    return raw
