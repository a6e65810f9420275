"""The game console, whichever way a plan reaches it: stdin, Source RCON or a program run in
the container. Every console use (say, save and stop commands, cron actions, /server console)
goes through `Console.send`, so a plan switches transport in one place.
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass
from datetime import UTC, datetime

from bot import rcon
from bot.docker_driver import DockerDriver
from bot.errors import PeonError
from bot.warplans import CONSOLE_COMMAND_MAX, ConsoleSpec

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# A reply on stdin is whatever the server logs next: PEON reads until the log has been quiet
# this long, or the console's timeout passes.
STDIN_QUIET = 0.75
STDIN_REPLY_MAX = 3.0


class ConsoleError(PeonError):
    """A console command that was refused or did not go through."""


def check_command(command: str) -> str:
    """A command a person typed, refused in one sentence when it could harm the console.

    A newline on stdin would start a second command, and other control characters reach the
    game's parser unseen; neither has a place in one console command.
    """
    text = command.strip()
    if not text:
        raise ConsoleError("The console command is empty.")
    if len(text) > CONSOLE_COMMAND_MAX:
        raise ConsoleError(
            f"The console command is {len(text)} characters long; the most is "
            f"{CONSOLE_COMMAND_MAX}."
        )
    if _CONTROL.search(text):
        raise ConsoleError(
            "The console command contains a line break or another control character; send one "
            "command at a time."
        )
    return text


def fill_message(template: str, message: str) -> str:
    """Put free text (a warning, a member's message) into a plan's command such as
    `say {message}`, quoted so the text can neither end the command nor start another.

    Consoles have no common escape: Source's splits commands at `;` outside quotes and ends a
    quoted argument at the next `"`, Minecraft's takes the rest of the line. So the text loses
    what could break out: line breaks and control characters become spaces, `"` becomes `'`,
    and outside quotes `;` becomes `,`.
    """
    text = " ".join(_CONTROL.sub(" ", message).split()).replace('"', "'")
    head = template.split("{message}", 1)[0]
    if head.count('"') % 2 == 0:  # the text is not inside a quoted argument
        text = text.replace(";", ",")
    room = CONSOLE_COMMAND_MAX - (len(template) - len("{message}"))
    if len(text) > room:
        text = text[: max(room - 1, 0)] + "…"
    return template.replace("{message}", text)


@dataclass(frozen=True)
class ConsoleReply:
    via: str  # stdin, rcon or exec
    text: str  # what the server answered (on stdin: what it logged next), secrets masked

    @property
    def how(self) -> str:
        return {"rcon": "over RCON", "exec": "through its console program"}.get(
            self.via, "on its console"
        )


@dataclass(frozen=True)
class Console:
    """One running server's console."""

    server: str
    spec: ConsoleSpec
    driver: DockerDriver
    container: str
    rcon_host: str | None = None
    rcon_port: int | None = None
    rcon_password: str | None = None

    async def send(self, command: str, *, reply: bool = True, ending: bool = False) -> str:
        """Send one command; return the reply text ("" when none was asked for).

        Without `reply`, or for an `ending` command (one that stops the server), a command
        that went out over RCON counts as done even if no answer comes.
        """
        if self.spec.via == "rcon":
            if self.rcon_host is None or self.rcon_port is None or self.rcon_password is None:
                raise ConsoleError(
                    f"{self.server} has no RCON port or password of its own: it was created "
                    "before its war plan gained them; create it again to use its console."
                )
            return await rcon.run(
                self.rcon_host,
                self.rcon_port,
                self.rcon_password,
                command,
                timeout=self.spec.timeout,
                server=self.server,
                expect_reply=reply and not ending,
            )
        if self.spec.via == "exec":
            argv = [*(self.spec.exec or []), command]
            try:
                code, output = await self.driver.exec(
                    self.container, argv, timeout=self.spec.timeout
                )
            except TimeoutError:
                raise ConsoleError(
                    f"{self.server}'s console program did not finish within {self.spec.timeout} s."
                ) from None
            if code != 0 and not ending:
                last = output.strip().splitlines()[-1:] or [""]
                raise ConsoleError(
                    f"{self.server}'s console program failed (exit {code}): {last[0][:200]}"
                )
            return output
        sent = datetime.now(UTC)
        await self.driver.send_console(self.container, command)
        return await self._stdin_reply(sent) if reply else ""

    async def _stdin_reply(self, sent: datetime) -> str:
        """The lines the server logs right after a command on stdin: its only way to answer."""
        lines: list[str] = []
        deadline = time.monotonic() + min(STDIN_REPLY_MAX, self.spec.timeout)
        stream = self.driver.follow_logs(self.container, since=sent)
        try:
            while (left := deadline - time.monotonic()) > 0:
                try:
                    line = await asyncio.wait_for(anext(stream), min(left, STDIN_QUIET))
                except (TimeoutError, StopAsyncIteration):
                    break
                lines.append(line)
        finally:
            await stream.aclose()
        return "\n".join(lines)
