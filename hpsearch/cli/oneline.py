"""Every failure of a command as one line: what the user sees instead of a traceback.

Our own errors (HpsearchError) carry their message; click's usage errors are shortened to one
line; anything else that escapes a command is a bug or an environment this code did not foresee,
and is still shown as one line that names the exception type (`--debug` shows the traceback).
"""

from __future__ import annotations

import typer
from typer._click.exceptions import ClickException, UsageError  # typer vendors click

from hpsearch.errors import HpsearchError, out_of_memory
from hpsearch.masking import one_line

UNEXPECTED = "unexpected"  # starts the line of an exception no command turned into a message


def error_line(exc: BaseException) -> str:
    """The whole message for `exc`, on one line (without the `hpsearch: error:` prefix)."""
    if isinstance(exc, HpsearchError):
        text = str(exc)
    elif isinstance(exc, UsageError):
        where = exc.ctx.command_path if exc.ctx is not None else "hpsearch"
        text = f"{exc.format_message()} (see `{where} --help`)"
    elif isinstance(exc, ClickException):
        text = exc.format_message()
    elif isinstance(exc, typer.Abort):
        text = "aborted"
    elif (memory := out_of_memory(exc)) is not None:  # torch's allocator: a RuntimeError
        text = memory
    elif isinstance(exc, OSError) and exc.strerror:
        where = f"{exc.filename}: " if exc.filename else ""
        text = f"{where}{exc.strerror}"
    else:
        text = f"{UNEXPECTED} {type(exc).__name__}: {exc} (rerun with --debug for the traceback)"
    return one_line(text)
