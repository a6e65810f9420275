"""Small asyncio helpers shared by the core services."""

from __future__ import annotations

import logging
from collections.abc import Awaitable

from bot.errors import PeonError


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
