"""Composition root for the bot: settings -> services -> bot -> start.

`python -m bot` and `peon run` both land in `run_bot`.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import sqlite3
import sys
from collections.abc import Callable, Coroutine
from typing import Any

import discord

from bot.app import open_services
from bot.client import PeonBot, StartupError, point_at
from bot.logs import configure_logging
from bot.settings import Settings, config_path, load_settings

log = logging.getLogger("peon")

MISSING_TOKEN = (
    "DISCORD_TOKEN is not set: create an application at https://discord.com/developers/"  # noqa: S105
    "applications, add a bot, copy its token and run `export DISCORD_TOKEN=...` (see README)."
)


async def serve(settings: Settings, *, guild_ready_timeout: float = 2.0) -> None:
    """Run the bot until it is closed; raises StartupError or discord.LoginFailure."""
    if settings.discord_token is None:
        raise StartupError(MISSING_TOKEN)
    point_at(settings.discord)
    async with open_services(settings) as services:
        bot = PeonBot(services=services, guild_ready_timeout=guild_ready_timeout)
        loop = asyncio.get_running_loop()
        closing: list[asyncio.Task[None]] = []

        async def shutdown(signame: str) -> None:
            # Game servers are not touched: they outlive the bot. Operations under way get
            # `shutdown_grace` to finish; the rest are recorded as interrupted and finished
            # or undone by the next start's reconcile.
            log.info("shutting down", extra={"signal": signame})
            left = await services.servers.drain(bot.settings.shutdown_grace)  # as reloaded
            for item in left:
                log.warning("operation interrupted by shutdown", extra={"operation": item})
            await bot.close()

        def on_signal(signame: str) -> None:
            if not closing:  # a second signal while draining changes nothing
                closing.append(asyncio.create_task(shutdown(signame)))

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, on_signal, sig.name)
        async with bot:
            await bot.start(settings.discord_token.get_secret_value())
        if closing:
            await closing[0]
        log.info("stopped")


def _event_loop_runner() -> Callable[[Coroutine[Any, Any, None]], None]:
    """uvloop where it is installed: it roughly halves the CPU each interaction costs, which
    is what bounds latency when many arrive at once (bench/interactions.py)."""
    try:
        import uvloop  # noqa: PLC0415 - optional, Linux/macOS only
    except ImportError:
        return asyncio.run
    return uvloop.run


def run_bot(settings: Settings) -> int:
    # The token, webhook URLs and keys are replaced by [redacted] wherever a line holds them.
    configure_logging(settings.log, settings.secret_values())
    try:
        _event_loop_runner()(serve(settings))
    except StartupError as e:
        sys.stderr.write(f"peon: {e}\n")
        return 1
    except discord.LoginFailure:
        sys.stderr.write(
            "peon: Discord rejected DISCORD_TOKEN: copy the bot's token again from "
            "https://discord.com/developers/applications (Bot > Reset Token).\n"
        )
        return 1
    except (OSError, sqlite3.Error) as e:
        sys.stderr.write(f"peon: cannot open the database {settings.db_path}: {e}\n")
        return 1
    except discord.PrivilegedIntentsRequired:
        sys.stderr.write("peon: Discord refused the bot's intents; PEON needs none privileged.\n")
        return 1
    except KeyboardInterrupt:
        return 0
    return 0


def main() -> int:
    return run_bot(load_settings(config_path(None, os.environ)))


if __name__ == "__main__":
    raise SystemExit(main())
