"""Small asyncio helpers shared by the core services."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from bot.errors import PeonError
from bot.models import ProgressEvent

log = logging.getLogger(__name__)

# How a service reports a long operation's steps to whoever shows them (a Discord message,
# the CLI's terminal, an API operation's stream).
Progress = Callable[[ProgressEvent], Awaitable[None]]


async def quietly(aw: Awaitable[object], *, what: str, logger: logging.Logger) -> None:
    """Await a best-effort step (a cleanup, a notice): an error is logged, never raised, so it
    cannot mask the error being handled or stop the job it is part of. A PEON error (the
    engine went away, say) is one line, its sentence; anything else is a bug: traceback."""
    try:
        await aw
    except PeonError as e:
        logger.warning("%s failed: %s", what, e)
    except Exception:
        logger.exception("%s failed", what)


async def emit_progress(progress: Progress | None, event: ProgressEvent) -> None:
    """Report progress; a failing display (a Discord edit, say) never fails the operation."""
    if progress is None:
        return
    try:
        await progress(event)
    except Exception:
        log.warning("progress callback failed", exc_info=True)
