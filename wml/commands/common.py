"""What every client command shares: the ``--url``/``--token``/``--json`` options, output as tables and
progress bars (rich, on a terminal) or as JSON (for scripts), and the exit codes.

Results go to stdout; progress bars and errors to stderr, so ``wml upload f --json | jq`` reads only
the result. An error is one line with its stable code, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)
from rich.table import Table

from core.settings import Settings
from wml.client.api import ApiError, Client
from wml.client.transfer import TransferError

# Exit codes of the client commands (also in `wml --help` and the README).
OK = 0
JOB_FAILED = 1  # run --follow, logs --follow: the job ended other than COMPLETE
USAGE = 2  # bad arguments, no token, a path that does not exist
REFUSED = 3  # the API refused the request (its code is printed: NOT_FOUND, VALIDATION_ERROR, ...)
UNREACHABLE = 4  # the server could not be reached, or failed (HTTP 5xx)
CORRUPT = 5  # a transfer's bytes did not match their sha256
EXIT_CODES = (
    "exit codes: 0 done; 1 the job ended other than COMPLETE (run --follow, logs --follow, watch); "
    "2 usage (bad arguments, no token); 3 the API refused the request (its code is printed); "
    "4 the server could not be reached or failed; 5 a transfer did not match its sha256; 130 interrupted"
)


PIPE_WIDTH = 500


class UsageError(Exception):
    """The command line cannot be carried out as given (exit code 2)."""


def client_options() -> argparse.ArgumentParser:
    """The options every client command takes (a parent parser)."""
    p = argparse.ArgumentParser(add_help=False)
    p.add_argument("--url", help="the API's base URL (default: WML_URL, else WML_PUBLIC_URL)")
    p.add_argument("--token", help="the API token (default: WML_TOKEN)")
    p.add_argument("--json", action="store_true", help="print the result as JSON (one object per line)")
    return p


def client_parser(sub: Any, name: str, common: argparse.ArgumentParser, **options: Any) -> Any:
    """A client command's parser: the common options, and the exit codes in its help."""
    return sub.add_parser(name, parents=[common], epilog=f"{EXIT_CODES}.", **options)


@dataclass
class Output:
    """Where a command's results go: JSON lines, or tables and text for people."""

    json: bool
    console: Console
    errors: Console

    @classmethod
    def create(cls, json_mode: bool) -> Output:
        console = Console(soft_wrap=True, highlight=False)
        if not console.is_terminal:  # a pipe or a file: whole rows, never cut to an assumed 80 columns
            console = Console(soft_wrap=True, highlight=False, width=PIPE_WIDTH)
        return cls(
            json=json_mode, console=console, errors=Console(stderr=True, soft_wrap=True, highlight=False)
        )

    def emit(self, value: Any) -> None:
        """One JSON value on one line (``--json``)."""
        sys.stdout.write(json.dumps(value, default=str) + "\n")
        sys.stdout.flush()

    def line(self, text: str) -> None:
        self.console.print(text, markup=False)

    def table(self, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
        table = Table(box=None, pad_edge=False, header_style="bold")
        for column in columns:
            table.add_column(column, overflow="fold")  # a narrow terminal wraps an id, never elides it
        for row in rows:
            table.add_row(*("" if v is None else str(v) for v in row))
        self.console.print(table)

    def lines(self, value: Any, texts: Sequence[str]) -> None:
        """``value`` as JSON with ``--json``, else ``texts`` one per line."""
        if self.json:
            self.emit(value)
        else:
            for text in texts:
                self.line(text)

    def result(self, value: Any, text: Callable[[], None]) -> None:
        """``value`` as JSON with ``--json``, else what ``text`` prints."""
        if self.json:
            self.emit(value)
        else:
            text()

    @contextmanager
    def progress(self) -> Iterator[Bars]:
        """Transfer bars on stderr, on a terminal and without ``--json`` (scripts read only the result)."""
        bars = Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            DownloadColumn(),
            TransferSpeedColumn(),
            TimeRemainingColumn(),
            console=self.errors,
            disable=self.json or not self.errors.is_terminal,  # a pipe or a log file gets no bars
            transient=False,
        )
        with bars:
            yield Bars(bars)


@dataclass
class Bars:
    progress: Progress

    def add(self, description: str, total: int, done: int = 0) -> Callable[[int], None]:
        """A new bar; returns the callback that advances it by a number of bytes."""
        task: TaskID = self.progress.add_task(description, total=total, completed=done)
        return lambda n: self.progress.advance(task, n)


def connect(settings: Settings, args: argparse.Namespace) -> Client:
    token = args.token or (settings.token.get_secret_value() if settings.token else None)
    if not token:
        raise UsageError("no token: pass --token or set WML_TOKEN")
    url = args.url or settings.url or settings.resolved_public_url()
    return Client(url, token)


def run_client_command(
    settings: Settings,
    args: argparse.Namespace,
    command: Callable[[Client, Output, argparse.Namespace], Awaitable[int]],
) -> int:
    """Run one client command; every expected failure becomes one line (or JSON object) on stderr with
    its code, and an exit code."""
    out = Output.create(args.json)

    async def main() -> int:
        async with connect(settings, args) as client:
            return await command(client, out, args)

    try:
        return asyncio.run(main())
    except UsageError as e:
        return _fail(out, "USAGE", str(e), USAGE)
    except ApiError as e:
        return _fail(out, e.code, e.message, UNREACHABLE if e.unreachable else REFUSED)
    except TransferError as e:
        code = (
            CORRUPT if e.code == "CHECKSUM_MISMATCH" else UNREACHABLE if e.code == "UNREACHABLE" else REFUSED
        )
        return _fail(out, e.code, e.message, code)
    except OSError as e:  # a local file that cannot be read or written
        return _fail(out, "LOCAL_FILE", f"{e.strerror or e}: {e.filename or ''}".rstrip(": "), USAGE)


def _fail(out: Output, code: str, message: str, exit_code: int) -> int:
    if out.json:
        sys.stderr.write(json.dumps({"error": {"code": code, "message": message}}) + "\n")
    else:
        sys.stderr.write(f"error: {code}: {message}\n")
    return exit_code
