"""Config files of war plans (`files:`): rendered from templates, merged into existing files,
and written into a server's volume before it starts.

Merging follows Pterodactyl Wings' config parsers (pterodactyl/wings parser/parser.go and
parser/helpers.go, read at f1c5bbd, 2024-03-17): a `set` key changes that key and keeps the
rest of the file; a missing key (and the file itself) is created. Keys are
- json, yaml: dotted paths ("a.b.c"); a `*` segment applies the rest to every child of that
  level (Wings: `foo.*.bar`, helpers.go IterateOverJson; here any number of `*`), `name[N]`
  an element of a list (helpers.go setValueAtPath; a missing list is created only for N=0);
  a value that renders as a whole number or true/false is written typed (helpers.go
  getKeyValue turns numbers into ints), unless the existing value there is text;
- ini: "section.key", split at the first dot outside brackets, so
  "[/Script/Engine.GameSession].MaxPlayers" names section /Script/Engine.GameSession
  (parser.go parseIniFile); a key without a dot is a key before the first section;
- properties: the key as written (parser.go parsePropertiesFile); values are written with
  non-ASCII characters as \\uXXXX escapes, as Wings does, which every Java reader decodes;
- xml: dotted path from the root element ("Root.Child.Leaf"); missing elements are created
  (not under a wildcard); a value "[attr='value']" sets an attribute (parser.go parseXmlFile,
  helpers.go xmlValueMatchRegex).
Unlike Wings, comments and order are kept in every format (Wings rewrites properties, json
and yaml from parsed data), and a file that cannot be parsed is never rewritten: the start is
refused with one sentence naming the file.

Libraries: configupdater (ini, keeps comments, order and duplicate keys), ruamel.yaml
round-trip (yaml, keeps comments and order), stdlib json, defusedxml (xml parsing with
entities refused) and stdlib ElementTree (writing). Properties are handled line by line here:
the format is small and no library keeps comments and continuation lines as written.
"""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
import logging
import posixpath
import re
import tarfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from configupdater import ConfigUpdater
from defusedxml import DefusedXmlException
from defusedxml.ElementTree import DefusedXMLParser
from ruamel.yaml import YAML
from ruamel.yaml.comments import CommentedMap
from ruamel.yaml.error import MarkedYAMLError, YAMLError

from bot.errors import ConfigFileError

if TYPE_CHECKING:
    from bot.docker_driver import DockerDriver
    from bot.warplans import FileSpec, Templates, WarPlan

log = logging.getLogger(__name__)

MAX_EXISTING = 4 * 1024 * 1024  # bytes; a config file bigger than this is not merged
_SEGMENT = re.compile(r"^(?P<name>[^\[\]]+)(?:\[(?P<index>\d+)\])?$")
_XML_NAME = re.compile(r"^[A-Za-z_][\w.-]*$")
_XML_ATTR = re.compile(r"^\[(\w+)='(.*)'\]$", re.S)  # Wings' xmlValueMatchRegex
_INT = re.compile(r"^-?(0|[1-9][0-9]{0,17})$")
_INI_TOP = "peon:top-level"  # stands in for the keys before the first section

Value = str | int | float | bool


class MergeError(ValueError):
    """Why a file cannot be rendered or merged; a phrase that follows the file's name and
    never quotes the file's content (it may hold secrets)."""


# --------------------------------------------------------------------------------------------
# Keys


def ini_key(key: str) -> tuple[str | None, str]:
    """(section or None for the top, option) of an ini key, split as Wings does."""
    path: list[str] = []
    buf: list[str] = []
    depth = 0
    for c in key:
        if c == "[":
            depth += 1
        elif c == "]":
            depth -= 1
        elif c == "." and depth == 0 and not path:
            path.append("".join(buf))
            buf = []
        else:
            buf.append(c)
    path.append("".join(buf))
    return (path[0], path[1]) if len(path) == 2 else (None, path[0])


def key_problem(fmt: str, key: str) -> str | None:
    """Why `key` cannot name a value in a file of format `fmt`, or None."""
    if fmt == "lines":
        # The start of the line as written, spaces included ("sv_port ", "Port=").
        if not key or any(c in key for c in "\r\n\0"):
            return "must be the non-empty start of a line, without line breaks"
        return None
    if not key or key != key.strip() or any(c in key for c in "\r\n\0"):
        return "must be a non-empty key without surrounding spaces or line breaks"
    if fmt == "ini":
        section, option = ini_key(key)
        if not option.strip() or (section is not None and not section.strip()):
            return "must be 'section.key' or 'key'"
        if section is not None and ("[" in section or "]" in section):
            return "has unbalanced brackets in its section"
        return None
    if fmt == "properties":
        return None
    parts = key.split(".")
    for i, part in enumerate(parts):
        if part == "*":
            if fmt == "xml" and i == 0:
                return "must start with the root element's name"
            continue
        m = _SEGMENT.match(part)
        if m is None:
            return f"has a bad segment '{part}' (dotted path of names, '*' or name[N])"
        if fmt == "xml" and (m.group("index") or not _XML_NAME.match(part)):
            return f"has '{part}', which is not an XML element name"
    return None


# --------------------------------------------------------------------------------------------
# Rendering


def render_file(spec: FileSpec, existing: bytes | None, fill: Callable[[str], str]) -> bytes:
    """The complete new content of one file (pure; raises MergeError)."""
    if spec.format == "text":
        content = spec.content or ""
        return (fill(content) if spec.template else content).encode("utf-8")
    values: dict[str, tuple[Value, bool]] = {}
    for key, raw in (spec.set or {}).items():
        value = raw
        # The attribute form is read from the plan's text, so a user's value can never turn
        # itself into one.
        m = _XML_ATTR.match(raw) if spec.format == "xml" and isinstance(raw, str) else None
        if isinstance(raw, str) and spec.template:
            value = f"[{m.group(1)}='{fill(m.group(2))}']" if m else fill(raw)
        values[key] = (value, m is not None)
    text, bom, crlf = _decode(existing)
    merged = MERGERS[spec.format](text, values)
    if crlf:
        merged = merged.replace("\n", "\r\n")
    return (("\ufeff" if bom else "") + merged).encode("utf-8")


def _decode(existing: bytes | None) -> tuple[str, bool, bool]:
    if existing is None:
        return "", False, False
    try:
        text = existing.decode("utf-8")
    except UnicodeDecodeError:
        raise MergeError("is not UTF-8 text") from None
    bom = text.startswith("\ufeff")
    text = text.removeprefix("\ufeff")
    crlf = "\r\n" in text
    return text.replace("\r\n", "\n"), bom, crlf


def _typed(value: Value, old: Any) -> Any:
    """A rendered text as json/yaml would hold it: numbers and true/false typed (as Wings
    does), unless the existing value is text."""
    if not isinstance(value, str) or isinstance(old, str):
        return value
    if _INT.match(value):
        return int(value)
    if value in ("true", "false"):
        return value == "true"
    return value


# --- properties -----------------------------------------------------------------------------


def _prop_key(line: str) -> tuple[str, int] | None:
    """(unescaped key, index where the value's separator begins) of a key line."""
    stripped = line.lstrip(" \t\f")
    if not stripped or stripped[0] in "#!":
        return None
    start = len(line) - len(stripped)
    key: list[str] = []
    i = start
    while i < len(line):
        c = line[i]
        if c == "\\" and i + 1 < len(line):
            nxt = line[i + 1]
            if nxt == "u" and re.match(r"[0-9a-fA-F]{4}", line[i + 2 : i + 6]):
                key.append(chr(int(line[i + 2 : i + 6], 16)))
                i += 6
                continue
            key.append({"t": "\t", "n": "\n", "r": "\r", "f": "\f"}.get(nxt, nxt))
            i += 2
            continue
        if c in "=: \t\f":
            break
        key.append(c)
        i += 1
    return "".join(key), i


def _continues(line: str) -> bool:
    trailing = len(line) - len(line.rstrip("\\"))
    return trailing % 2 == 1


def _prop_escape(text: str, key: bool = False) -> str:
    out: list[str] = []
    for i, c in enumerate(text):
        if c == "\\":
            out.append("\\\\")
        elif c in "\n\r\t\f":
            out.append({"\n": "\\n", "\r": "\\r", "\t": "\\t", "\f": "\\f"}[c])
        elif key and c in "=: #!":
            out.append("\\" + c)
        elif c == " " and i == 0:
            out.append("\\ ")
        elif ord(c) > 0x7E:
            # As Wings writes them: a Java reader decodes \\uXXXX whatever charset it reads.
            data = c.encode("utf-16-be")
            for j in range(0, len(data), 2):
                out.append(f"\\u{int.from_bytes(data[j : j + 2], 'big'):04x}")
        else:
            out.append(c)
    return "".join(out)


def merge_properties(text: str, values: Mapping[str, tuple[Value, bool]]) -> str:
    lines = text.split("\n")
    trailing = text.endswith("\n") or not text
    if lines and lines[-1] == "":
        lines.pop()
    out: list[str] = []
    done: set[str] = set()
    i = 0
    while i < len(lines):
        line = lines[i]
        j = i
        while _continues(lines[j]) and j + 1 < len(lines) and _prop_key(line) is not None:
            j += 1
        parsed = _prop_key(line)
        if parsed is not None and parsed[0] in values:
            key, at = parsed
            rest = line[at:]
            # The separator as written ("=", " = ", ":" or spaces); always matches.
            sep = re.match(r"[ \t\f]*[=:]?[ \t\f]*", rest)
            new = _text(values[key][0])
            out.append(line[:at] + (sep.group(0) if sep else "") + _prop_escape(new))
            done.add(key)
        else:
            out.extend(lines[i : j + 1])
        i = j + 1
    for key, (value, _) in values.items():
        if key not in done:
            out.append(f"{_prop_escape(key, key=True)}={_prop_escape(_text(value))}")
    return "\n".join(out) + ("\n" if trailing or out else "")


def _text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# --- ini ------------------------------------------------------------------------------------


def merge_ini(text: str, values: Mapping[str, tuple[Value, bool]]) -> str:
    # Written as the file already is: "key = value" or "key=value" (most game files).
    spaced = bool(re.search(r"^[^\s#;\[][^=\n]*\s=\s", text, re.M))
    updater = ConfigUpdater(strict=False, allow_no_value=True, space_around_delimiters=spaced)
    # Keys before the first section (Wings' default section): parsed under a stand-in header.
    try:
        updater.read_string(f"[{_INI_TOP}]\n{text}")
    except Exception as e:  # configparser.Error and its kin; their text quotes lines
        raise MergeError(f"is not a valid INI file ({type(e).__name__})") from None
    # configupdater matches option names case-insensitively (as ConfigParser does), which
    # suits games' ini readers; the spelling in the file is kept.
    for key, (value, _) in values.items():
        section, option = ini_key(key)
        section = section if section is not None else _INI_TOP
        text_value = _text(value)
        if "\n" in text_value or "\r" in text_value:
            raise MergeError(f"cannot hold a line break in ini key {key}")
        if not updater.has_section(section):
            updater.add_section(section)
        updater[section][option] = text_value
    return str(updater).removeprefix(f"[{_INI_TOP}]\n")


# --- json / yaml ----------------------------------------------------------------------------


def _set_path(doc: Any, parts: list[str], value: Value, make: Callable[[], Any], key: str) -> None:
    """Set a dotted path in parsed data (mappings and lists), creating missing mappings."""
    part, rest = parts[0], parts[1:]
    if part == "*":
        children = list(doc.values()) if isinstance(doc, dict) else doc
        if not isinstance(children, list):
            return
        if not rest:
            if isinstance(doc, dict):
                for k in doc:
                    doc[k] = _typed(value, doc[k])
            else:
                for n, old in enumerate(doc):
                    doc[n] = _typed(value, old)
            return
        for child in children:
            if isinstance(child, dict | list):
                _set_path(child, rest, value, make, key)
        return
    if not isinstance(doc, dict):
        raise MergeError(f"has no mapping where key {key} goes")
    m = _SEGMENT.match(part)
    if m is None:  # refused when the plan loaded
        raise MergeError(f"cannot take key {key}")
    name, index = m.group("name"), m.group("index")
    if index is None:
        if not rest:
            doc[name] = _typed(value, doc.get(name))
            return
        if name not in doc or doc[name] is None:
            doc[name] = make()
        _set_path(doc[name], rest, value, make, key)
        return
    n = int(index)
    seq = doc.get(name)
    if seq is None and n == 0:
        seq = doc[name] = [make() if rest else None]
    if not isinstance(seq, list) or n >= len(seq):
        raise MergeError(f"has no list element {name}[{n}] for key {key}")
    if not rest:
        seq[n] = _typed(value, seq[n])
        return
    if seq[n] is None:
        seq[n] = make()
    _set_path(seq[n], rest, value, make, key)


def merge_json(text: str, values: Mapping[str, tuple[Value, bool]]) -> str:
    if text.strip():
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as e:
            raise MergeError(f"is not valid JSON (line {e.lineno}, column {e.colno})") from None
        if not isinstance(doc, dict | list):
            raise MergeError("is JSON but not an object or a list")
    else:
        doc = {}
    for key, (value, _) in values.items():
        _set_path(doc, key.split("."), value, dict, key)
    indent: int | str | None = 2
    if text.strip():
        m = re.search(r"\n([ \t]+)\S", text)
        indent = (m.group(1) if "\t" in m.group(1) else len(m.group(1))) if m else None
    out = json.dumps(doc, indent=indent, ensure_ascii=False)
    return out + "\n" if text.endswith("\n") or not text.strip() else out


def merge_yaml(text: str, values: Mapping[str, tuple[Value, bool]]) -> str:
    # Round-trip mode builds only plain data (tags become tagged scalars), never objects.
    yaml = YAML(typ="rt")
    yaml.preserve_quotes = True
    try:
        doc = yaml.load(text) if text.strip() else None
    except MarkedYAMLError as e:
        mark = e.problem_mark
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise MergeError(f"is not valid YAML{where}") from None
    except YAMLError:
        raise MergeError("is not valid YAML") from None
    if doc is None:
        doc = CommentedMap()
    if not isinstance(doc, dict | list):
        raise MergeError("is YAML but not a mapping or a list")
    for key, (value, _) in values.items():
        _set_path(doc, key.split("."), value, CommentedMap, key)
    buf = io.StringIO()
    yaml.dump(doc, buf)
    return buf.getvalue()


# --- xml ------------------------------------------------------------------------------------

_XMLNS = re.compile(r"""\sxmlns:([\w.-]+)\s*=\s*(["'])(.*?)\2""")
_PROLOG = re.compile(r"\A(?:\s|<\?xml[^>]*\?>|<!--.*?-->|<!DOCTYPE[^>\[]*>|<\?[^>]*\?>)*", re.S)


def merge_xml(text: str, values: Mapping[str, tuple[Value, bool]]) -> str:
    root: ET.Element | None = None
    prolog = '<?xml version="1.0" encoding="utf-8"?>\n'
    if text.strip():
        # Comments kept (TreeBuilder); entities and external references refused by defusedxml.
        parser = DefusedXMLParser(target=ET.TreeBuilder(insert_comments=True, insert_pis=True))
        try:
            parser.feed(text)
            root = parser.close()
        except DefusedXmlException:
            raise MergeError("declares entities or external references (refused)") from None
        except ET.ParseError as e:
            line, col = e.position
            raise MergeError(f"is not valid XML (line {line}, column {col})") from None
        m = _PROLOG.match(text)
        prolog = m.group(0) if m else ""
        _keep_prefixes(text)
    new = root is None
    # A default namespace (<Project xmlns="...">): keys name elements by their local names.
    default_ns = root.tag[1:].split("}", 1)[0] if root is not None and root.tag[0] == "{" else ""

    def qualified(name: str) -> str:
        return f"{{{default_ns}}}{name}" if default_ns else name

    for key, (value, attr) in values.items():
        parts = key.split(".")
        if root is None:
            root = ET.Element(parts[0])
        if root.tag != qualified(parts[0]):
            tag = root.tag.rsplit("}", 1)[-1]
            raise MergeError(f"has root element <{tag}>, not <{parts[0]}> of key {key}")
        targets = [root]
        for part in parts[1:]:
            if part == "*":
                targets = [c for t in targets for c in t if isinstance(c.tag, str)]
                continue
            found: list[ET.Element] = []
            for t in targets:
                hits = t.findall(qualified(part))
                if not hits and "*" not in parts:
                    hits = [_append(t, qualified(part))]
                found += hits
            targets = found
        for element in targets:
            m = _XML_ATTR.match(value) if attr and isinstance(value, str) else None
            if m is not None:
                element.set(m.group(1), m.group(2))
            else:
                element.text = _text(value)
    if root is None:
        raise MergeError("was given no key to set")
    if new:
        ET.indent(root, space="  ")
    try:
        body = ET.tostring(root, encoding="unicode", default_namespace=default_ns or None)
    except ValueError:  # an element outside the default namespace (xmlns="" inside)
        raise MergeError("mixes namespaces in a way PEON cannot write back") from None
    return prolog + body + "\n"


def _keep_prefixes(text: str) -> None:
    """Write the document's namespace prefixes as it declares them (xsi:nil stays xsi:nil,
    not ns0:nil). ElementTree's prefix registry is process-wide; a prefix maps to one URI
    everywhere, which is what config files' schema prefixes are."""
    for prefix, _, uri in _XMLNS.findall(text):
        if prefix:
            with contextlib.suppress(ValueError):  # the reserved ns0, ns1... forms
                ET.register_namespace(prefix, uri)


def _append(parent: ET.Element, tag: str) -> ET.Element:
    """A new child that lines up with its siblings (their whitespace copied)."""
    kids = list(parent)
    child = ET.SubElement(parent, tag)
    if kids:
        child.tail = kids[-1].tail
        kids[-1].tail = kids[-2].tail if len(kids) > 1 else parent.text
    return child


def merge_lines(text: str, values: Mapping[str, tuple[Value, bool]]) -> str:
    """Pterodactyl's `file` parser (parser.go parseTextFile): every line that starts with a
    key becomes that key's value, whole; other lines stay, and no line is added."""
    out = []
    for line in text.split("\n"):
        hit = next((v for start, (v, _attr) in values.items() if line.startswith(start)), None)
        out.append(line if hit is None else _lines_text(hit))
    return "\n".join(out)


def _lines_text(value: Value) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


MERGERS: dict[str, Callable[[str, Mapping[str, tuple[Value, bool]]], str]] = {
    "properties": merge_properties,
    "ini": merge_ini,
    "json": merge_json,
    "yaml": merge_yaml,
    "xml": merge_xml,
    "lines": merge_lines,
}


# --------------------------------------------------------------------------------------------
# Writing into a server's volume


def numeric_owner(user: str | None) -> tuple[int, int] | None:
    """(uid, gid) of a plan's `user:` when numeric ("1000" or "1000:1000"), else None."""
    if not user:
        return None
    uid, _, gid = user.partition(":")
    if not uid.isdigit() or (gid and not gid.isdigit()):
        return None
    return int(uid), int(gid or 0)


def parse_mode(mode: str) -> int:
    return int(mode, 8)


def file_tar(
    name: str, data: bytes, mode: int, owner: tuple[int, int], folders: Sequence[str] = ()
) -> bytes:
    """A tar holding one whole file (the engine extracts it in one piece), after entries for
    the `folders` to make, owned like the file (the engine would make them root's)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for folder in folders:
            entry = tarfile.TarInfo(folder)
            entry.type = tarfile.DIRTYPE
            entry.mode = 0o755
            entry.uid, entry.gid = owner
            entry.mtime = int(time.time())
            tar.addfile(entry)
        info = tarfile.TarInfo(name)
        info.size = len(data)
        info.mode = mode
        info.uid, info.gid = owner
        info.mtime = int(time.time())
        tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass(frozen=True)
class Rendered:
    spec: FileSpec
    directory: str  # the volume's path in the container: the tar is extracted there
    data: bytes
    owner: tuple[int, int]
    folders: tuple[str, ...]  # parent folders to make, outermost first


class FileWriter:
    """Writes a plan's files into a (created, not running) container's volumes."""

    async def write(
        self,
        driver: DockerDriver,
        container: str,
        plan: WarPlan,
        templates: Templates,
        *,
        server: str,
        only_missing: bool = False,
    ) -> list[str]:
        """Render every file first, then write them: a file that cannot be rendered or merged
        refuses the whole step (ConfigFileError) with nothing written. `only_missing`: just
        the `when: missing` files (at create). Returns the paths written."""
        plan_owner = numeric_owner(plan.user)
        todo: list[Rendered] = []
        for spec in plan.files:
            if only_missing and spec.when != "missing":
                continue
            directory = volume_path(plan, spec)
            target = posixpath.join(directory, spec.path)
            found = await driver.read_file(container, target, MAX_EXISTING)
            if found is not None and spec.when == "missing":
                continue
            if found is not None and found.problem:
                raise ConfigFileError(server, spec.path, found.problem)
            existing = found.data if found is not None else None
            try:
                data = await asyncio.to_thread(render_file, spec, existing, templates.fill)
            except MergeError as e:
                raise ConfigFileError(server, spec.path, str(e)) from None
            owner = plan_owner or (found.owner if found is not None else (0, 0))
            folders: list[str] = []
            if found is None:
                parent = posixpath.dirname(spec.path)
                while parent and not await driver.path_exists(
                    container, posixpath.join(directory, parent)
                ):
                    folders.insert(0, parent)
                    parent = posixpath.dirname(parent)
            todo.append(Rendered(spec, directory, data, owner, tuple(folders)))
        for item in todo:
            mode = parse_mode(item.spec.mode)
            tar = await asyncio.to_thread(
                file_tar, item.spec.path, item.data, mode, item.owner, item.folders
            )
            await driver.write_archive(container, item.directory, io.BytesIO(tar))
        written = [r.spec.path for r in todo]
        if written:
            # Paths only: the content may hold secrets.
            log.info("%s: wrote %s", server, ", ".join(written))
        return written


def volume_path(plan: WarPlan, spec: FileSpec) -> str:
    name = spec.volume or plan.volumes[0].name
    return next(v.path for v in plan.volumes if v.name == name)
