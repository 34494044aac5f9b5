"""Fixtures of the trainer's tests."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from hpsearch.trainer import data_files


@pytest.fixture
def isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No real copy of any dataset is visible: Debian dirs, cache and $HPSEARCH_DATA point to
    empty folders, and every network connection fails at once."""
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setattr(data_files, "DEBIAN_DIRS", {"fashion-mnist": empty / "debian-fm",
                                                  "mnist": empty / "debian-mnist"})
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    monkeypatch.delenv("HPSEARCH_DATA", raising=False)

    def no_network(*args: object, **kwargs: object) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    return tmp_path
