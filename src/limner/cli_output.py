"""How the ``limner`` command shows things: results for scripts, progress for people, hints in CLI terms.

The boundary: :mod:`limner.cli` parses options and calls the services; this module decides what lands on
stdout and stderr. Results (IDs, paths, JSON) go to stdout and are never wrapped or cut, whatever the
terminal width, because scripts read them. Progress goes to stderr only: a rich bar on a terminal, a few
plain lines otherwise, so that stdout holds nothing but results. Error hints written for another reader
(an LLM, a web page) are replaced here, by error code, with what to type at the command line.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import Iterable
from pathlib import Path
from types import TracebackType
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TaskID, TaskProgressColumn, TextColumn, TimeElapsedColumn

from limner.backends.base import Progress as ToolProgress
from limner.errors import LimnerError
from limner.library import ImageRecord

__all__ = ["CLI_HINTS", "ProgressReporter", "cli_hint", "image_json", "images_document", "tsv_line"]

CLI_HINTS: dict[str, str] = {
    "image_not_found": (
        "`limner images list --user {user}` lists the images of {user!r}, the user this command acted as. "
        "An image made with an API token or in the web UI belongs to that token's or account's user: "
        "add `--user NAME`."
    ),
    "conversation_not_found": (
        "A conversation belongs to the user who started it ({user!r} here): add `--user NAME`, "
        "or leave out --conversation to start a new one."
    ),
    "agent_not_found": "An agent belongs to the user who made it ({user!r} here): add `--user NAME`.",
    "token_not_found": "`limner tokens list` shows every token with its ID.",
    "missing_credentials": (
        "Set {env_var} in the environment or in a .env file in this folder "
        "(with no provider configured at all, the CLI uses the built-in sandbox)."
    ),
}
"""CLI hints by error code; the fields of the error and ``user`` (the acting user's name) fill them in.
Codes not listed keep the error's own hint, which is already written for anyone."""


def cli_hint(exc: LimnerError, *, user: str) -> str | None:
    """The hint the command line shows for ``exc``: the CLI's own for its code, else the error's."""
    template = CLI_HINTS.get(exc.code)
    if template is None:
        return exc.hint
    return template.format_map({**vars(exc), "user": user})


# --- results ------------------------------------------------------------------------------------


def image_json(record: ImageRecord, file: Path | None = None) -> dict[str, Any]:
    """One image as ``--json`` shows it: the HTTP API's image fields (links relative to a ``limner serve``
    of this data dir), plus ``file``, the path ``--out`` wrote it to (else null).
    """
    data = record.model_dump(mode="json", exclude={"owner_id", "endpoint", "message_id"})
    base = f"/api/images/{record.id}"
    data.update(content_url=f"{base}/content", thumbnail_url=f"{base}/thumbnail", file=str(file) if file else None)
    return data


def images_document(records: Iterable[ImageRecord], files: list[Path] | None = None) -> str:
    """The one ``--json`` document of ``generate``, ``edit`` and ``images list``: ``{"images": [...]}``."""
    listed = list(records)
    paths: list[Path | None] = list(files) if files else [None] * len(listed)
    return json.dumps({"images": [image_json(r, p) for r, p in zip(listed, paths, strict=True)]}, indent=2)


_WHITESPACE = re.compile(r"\s+")


def tsv_line(record: ImageRecord) -> str:
    """``images list`` for a pipe: one tab-separated line per image (ID first; the prompt on one line)."""
    prompt = _WHITESPACE.sub(" ", record.prompt or record.original_name or "").strip()
    fields = (record.id, record.created_at.isoformat(), record.source, f"{record.width}x{record.height}", prompt)
    return "\t".join(fields)


# --- progress -----------------------------------------------------------------------------------


class ProgressReporter:
    """A tool's progress callback that shows its reports on ``console`` (stderr).

    On a terminal: a transient rich bar with the fraction, the upstream's state (Stable Diffusion's
    step, Flux's task status) and the partial images received. Elsewhere (a pipe, a log file): one line
    per tenth of the work or per new state, never a bar's control codes. Rendering writes to the
    console, so it runs in a thread: the event loop never blocks on a slow terminal.
    """

    def __init__(self, console: Console, label: str) -> None:
        self.console = console
        self.label = label
        self.partials = 0
        self._bar: Progress | None = None
        self._task: TaskID | None = None
        self._last_line: tuple[int, str] | None = None

    async def __aenter__(self) -> ProgressReporter:
        if self.console.is_terminal:
            self._bar = Progress(
                SpinnerColumn(),
                TextColumn("{task.description}"),
                BarColumn(),
                TaskProgressColumn(),
                TimeElapsedColumn(),
                console=self.console,
                transient=True,
            )
            self._task = self._bar.add_task(f"{self.label}: waiting for the image service", total=None)
            await asyncio.to_thread(self._bar.start)
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._bar is not None:
            await asyncio.to_thread(self._bar.stop)

    async def __call__(self, update: ToolProgress) -> None:
        """Show one report (the ``ToolContext.progress`` callback)."""
        if update.partial_image is not None:
            self.partials += 1
        state = ", ".join(
            part
            for part in (update.message, f"{self.partials} partial image(s) received" if self.partials else None)
            if part
        )
        if self._bar is not None and self._task is not None:
            description = f"{self.label}: {state or 'working'}"
            fields: dict[str, Any] = {"description": description}
            if update.fraction is not None:
                fields.update(total=1.0, completed=update.fraction)
            await asyncio.to_thread(self._bar.update, self._task, refresh=True, **fields)
        else:
            await self._line(update.fraction, state)

    async def _line(self, fraction: float | None, state: str) -> None:
        """A plain line when the work passes a tenth or its state changes (a step count alone does not)."""
        tenth = -1 if fraction is None else int(fraction * 10)
        kind = re.sub(r"\d+", "#", state)
        if self._last_line is not None and tenth <= self._last_line[0] and kind == self._last_line[1]:
            return
        self._last_line = (max(tenth, self._last_line[0] if self._last_line else -1), kind)
        percent = "" if fraction is None else f" {fraction:4.0%}"
        text = f"{self.label}:{percent} {state}".rstrip()
        await asyncio.to_thread(self.console.out, text, highlight=False)
