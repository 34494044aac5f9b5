"""Command-line entry point: registers the commands; errors become one line (see app.py)."""

from __future__ import annotations

import os
import sys

from hpsearch.cli import (  # noqa: F401  (registers commands)
    dashboard_cmd,
    db_cmds,
    enqueue_cmd,
    evaluate_cmd,
    query_cmds,
    run_cmds,
    train_cmd,
)
from hpsearch.cli.app import OneLineErrors, app

__all__ = ["app", "main"]


def main() -> None:
    """Run the CLI. `--debug` (anywhere) or HPSEARCH_DEBUG=1 shows tracebacks."""
    OneLineErrors.debug = "--debug" in sys.argv or os.environ.get("HPSEARCH_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    app()
