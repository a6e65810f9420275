"""Logging set-up: one line per event, key=value (logfmt) or JSON, secrets never written.

Fields given with `extra=` (server=..., host=..., op=...) become keys of their own, so a log
shipper can filter on them. A traceback stays inside its event's line (escaped), so one line
is always one event.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from typing import Any

from bot.settings import LogSettings

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}
REDACTED = "[redacted]"


def _fields(record: logging.LogRecord, formatter: logging.Formatter) -> dict[str, Any]:
    data: dict[str, Any] = {
        "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
        "level": record.levelname.lower(),
        "logger": record.name,
        "msg": record.getMessage(),
    }
    for key, value in vars(record).items():
        if key not in _STANDARD and not key.startswith("_"):
            data[key] = value
    if record.exc_info:
        data["exc"] = formatter.formatException(record.exc_info)
    return data


class _Redacting(logging.Formatter):
    def __init__(self, secrets: Iterable[str] = ()) -> None:
        super().__init__()
        self.secrets = [s for s in secrets if s]

    def redact(self, line: str) -> str:
        for secret in self.secrets:
            line = line.replace(secret, REDACTED)
        return line


class JsonFormatter(_Redacting):
    def format(self, record: logging.LogRecord) -> str:
        return self.redact(json.dumps(_fields(record, self), ensure_ascii=False, default=str))


class LogfmtFormatter(_Redacting):
    """ts=... level=info logger=bot.watch msg="..." server=alpha"""

    def format(self, record: logging.LogRecord) -> str:
        return self.redact(" ".join(f"{k}={_value(v)}" for k, v in _fields(record, self).items()))


def _value(v: object) -> str:
    text = str(v)
    if text and not any(c in text for c in ' "=\n\t\\'):
        return text
    escaped = (
        text.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n").replace("\t", "\\t")
    )
    return f'"{escaped}"'


def configure_logging(settings: LogSettings, secrets: Iterable[str] = ()) -> None:
    handler = logging.StreamHandler()
    secrets = list(secrets)
    handler.setFormatter(
        JsonFormatter(secrets) if settings.format == "json" else LogfmtFormatter(secrets)
    )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(settings.level)
    # discord.py logs every gateway event at DEBUG; keep it at INFO unless asked.
    logging.getLogger("discord").setLevel(max(logging.INFO, root.level))


def reconfigure_logging(settings: LogSettings, secrets: Iterable[str] | None = None) -> None:
    """Settings from a reload: the level, and the format of PEON's own handlers and what they
    redact (`secrets`; unchanged when None); handlers others added (a test's capture) are
    left alone."""
    root = logging.getLogger()
    root.setLevel(settings.level)
    logging.getLogger("discord").setLevel(max(logging.INFO, root.level))
    kind = JsonFormatter if settings.format == "json" else LogfmtFormatter
    _reformat(lambda current: kind(current.secrets if secrets is None else secrets))


def redact_in_logs(secrets: Iterable[str]) -> None:
    """What PEON's own handlers replace by [redacted] from now on (webhooks reloaded)."""
    secrets = list(secrets)
    _reformat(lambda current: type(current)(secrets))


def _reformat(make: Callable[[_Redacting], _Redacting]) -> None:
    for handler in logging.getLogger().handlers:
        if isinstance(handler.formatter, _Redacting):
            handler.setFormatter(make(handler.formatter))
