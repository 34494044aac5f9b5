"""Small helpers shared by the test modules."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import pytest

from hpsearch.cli import main


def wait_for(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll `condition` until it holds; errors count as "not yet" (the schema may not exist)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if condition():
                return
        except Exception:  # noqa: BLE001 - e.g. tables not created yet
            pass
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


def hps(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        *args: str) -> tuple[int, str, str]:
    """Run `hpsearch ARGS` in this process through the real entry point: (exit code, out, err)."""
    monkeypatch.setenv("COLUMNS", "250")  # rich tables: no wrapping in captured output
    monkeypatch.setattr(sys, "argv", ["hpsearch", *args])
    with pytest.raises(SystemExit) as exit_info:
        main()
    out, err = capsys.readouterr()
    code = exit_info.value.code
    return (code if isinstance(code, int) else 0 if code is None else 1), out, err
