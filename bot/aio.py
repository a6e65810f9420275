"""Small asyncio helpers shared by the core services."""

from __future__ import annotations

import logging
from collections.abc import Awaitable


async def quietly(aw: Awaitable[object], *, what: str, logger: logging.Logger) -> None:
    """Await a best-effort step (a cleanup, a notice): an error is logged with its traceback,
    never raised, so it cannot mask the error being handled or stop the job it is part of."""
    try:
        await aw
    except Exception:
        logger.exception("%s failed", what)
