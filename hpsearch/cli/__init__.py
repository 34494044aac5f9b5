"""Command-line entry point: registers the commands; errors become one line (see app.py)."""

from __future__ import annotations

import atexit
import gc
import logging
import sys
import traceback
from types import TracebackType
from typing import Any

from hpsearch.cli import (  # noqa: F401  (registers commands)
    dashboard_cmd,
    db_cmds,
    enqueue_cmd,
    evaluate_cmd,
    info_cmd,
    init_cmd,
    model_cmd,
    output_cmds,
    query_cmds,
    run_cmds,
    study_cmds,
    train_cmd,
)
from hpsearch.cli.app import app

__all__ = ["app", "main"]


def main() -> None:
    """Run the CLI (`hpsearch --debug ...` or HPSEARCH_DEBUG=1 shows tracebacks)."""
    _mask_secrets_everywhere()
    _no_last_collection()
    app()


def _no_last_collection() -> None:
    """At exit the interpreter collects every object left in a reference cycle: the classes
    and functions of every module imported (SQLAlchemy, pydantic, typer), 0.25 CPU seconds of
    a 0.8-s no-op command, for memory the exit frees anyway. Frozen (gc.freeze) they are left
    alone; files are closed where they are written (`with`), so no write waits for it."""
    atexit.unregister(gc.freeze)  # registered once, however often main() runs (tests)
    atexit.register(gc.freeze)


def _mask_secrets_everywhere() -> None:
    """Credentials never reach a terminal or a log: every log record (ours, Optuna's,
    SQLAlchemy's, in workers' log files too) and every traceback (--debug, a crash) is masked
    as it is made, whatever printed the URL into it."""
    make_record = logging.getLogRecordFactory()
    formatter = logging.Formatter()

    def masked_record(*args: Any, **kwargs: Any) -> logging.LogRecord:
        record = make_record(*args, **kwargs)
        record.msg, record.args = _masked(record.getMessage()), None
        if record.exc_info:
            record.exc_text = _masked(formatter.formatException(record.exc_info))
        return record

    def masked_traceback(kind: type[BaseException], value: BaseException,
                         tb: TracebackType | None) -> None:
        sys.stderr.write(_masked("".join(traceback.format_exception(kind, value, tb))))

    logging.setLogRecordFactory(masked_record)
    sys.excepthook = masked_traceback


def _masked(text: str) -> str:
    # imported when first needed: SQLAlchemy costs `hpsearch --help` 0.2 s
    from hpsearch.masking import mask_secrets

    return mask_secrets(text)
