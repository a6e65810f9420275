"""Structured logs: one line per event (logfmt or JSON), extra fields as keys, secrets out."""

from __future__ import annotations

import json
import logging
import sys

from bot.logs import JsonFormatter, LogfmtFormatter

SECRET = "emu.s3cr3t-token"


def record(msg: str, **extra: object) -> logging.LogRecord:
    try:
        raise ValueError("bad\nthing")
    except ValueError:
        exc = sys.exc_info()
    r = logging.LogRecord("bot.watch", logging.WARNING, __file__, 1, msg, None, exc)
    for k, v in extra.items():
        setattr(r, k, v)
    return r


def test_logfmt_is_one_line_with_keys_escaped_and_the_token_redacted() -> None:
    line = LogfmtFormatter([SECRET]).format(
        record(f'restart "x" failed with {SECRET}', server="alpha", attempt=2)
    )
    assert "\n" not in line
    assert " level=warning logger=bot.watch " in line
    assert 'msg="restart \\"x\\" failed with [redacted]"' in line
    assert " server=alpha attempt=2 " in line
    assert 'exc="Traceback' in line and "bad\\nthing" in line
    assert SECRET not in line


def test_json_is_one_object_per_line() -> None:
    line = JsonFormatter([SECRET]).format(record(f"token {SECRET}", server="alpha"))
    data = json.loads(line)
    assert data["msg"] == "token [redacted]" and data["server"] == "alpha"
    assert data["level"] == "warning" and "ValueError" in data["exc"]
