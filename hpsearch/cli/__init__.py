"""Command-line entry point: registers the commands and turns user errors into one line."""

from __future__ import annotations

import os
import sys

from hpsearch.cli import (  # noqa: F401  (registers commands)
    db_cmds,
    evaluate_cmd,
    info_cmd,
    query_cmds,
    run_cmds,
    train_cmd,
)
from hpsearch.cli.app import app
from hpsearch.errors import HpsearchError

__all__ = ["app", "main"]


def main() -> None:
    """Run the CLI. `--debug` (anywhere) or HPSEARCH_DEBUG=1 shows tracebacks."""
    debug = "--debug" in sys.argv or os.environ.get("HPSEARCH_DEBUG") == "1"
    if "--debug" in sys.argv:
        sys.argv.remove("--debug")
    try:
        app()
    except HpsearchError as exc:
        if debug:
            raise
        print(f"hpsearch: error: {exc}", file=sys.stderr)
        sys.exit(2)
