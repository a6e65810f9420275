"""Regular expressions from war plans (ready lines, player joins and leaves, save
confirmations), run with RE2: its matching time is linear in the line's length, so no pattern
can stall PEON on a long or hostile log line the way a backtracking one can (a Terraria join
pattern took 0.3-1.4 s of CPU per status call under Python's `re`). RE2 refuses what it cannot
run in linear time (lookarounds, backreferences); such a plan is refused when it is loaded.
"""

from __future__ import annotations

from typing import Any, Protocol

import re2

_OPTIONS = re2.Options()
_OPTIONS.log_errors = False  # the refusal is ours to word, not a line on stderr


class Pattern(Protocol):
    """What PEON uses of a compiled pattern (RE2's, shaped like `re.Pattern`)."""

    groupindex: Any

    def search(self, text: str) -> Any: ...


def compile_pattern(text: str) -> Pattern:
    """RE2-compile a plan's regex; ValueError with one sentence when RE2 cannot run it."""
    try:
        return re2.compile(text, _OPTIONS)  # type: ignore[no-any-return]
    except re2.error as e:
        reason = e.args[0].decode() if e.args and isinstance(e.args[0], bytes) else str(e)
        raise ValueError(
            f"not a regular expression PEON can run in linear time ({reason}); lookarounds "
            "and backreferences are not supported"
        ) from None
