"""Reading a TOML file safely (size bound, UTF-8, no control characters) and checking its
tables and values: each problem is one ConfigError naming the file and the key."""

from __future__ import annotations

import contextlib
import os
import stat
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from hpsearch.errors import ConfigError
from hpsearch.masking import one_line
from hpsearch.params import coerce

MAX_STUDY_FILE_BYTES = 1 << 20  # a study file is a few hundred bytes; /dev/zero is not one


def check_table(doc: dict[str, Any], key: str, allowed: set[str], where: str) -> dict[str, Any]:
    value = doc.get(key, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{key}] must be a table")
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) in [{key}]: {', '.join(unknown)} "
            f"(allowed: {', '.join(sorted(allowed))})"
        )
    return value


@contextlib.contextmanager
def prefixed(where: str) -> Iterator[None]:
    """A ConfigError raised inside is raised again with `where: ` in front."""
    try:
        yield
    except ConfigError as exc:
        raise ConfigError(f"{where}: {exc}") from None


def typed_value(where: str, key: str, value: Any, kind: type, *, minimum: float | None = None,
                maximum: float | None = None) -> Any:
    with prefixed(where):
        out = coerce(key, value, kind)
    if minimum is not None and out < minimum:
        raise ConfigError(f"{where}: {key} must be at least {minimum}, got {value!r}")
    if maximum is not None and out > maximum:
        raise ConfigError(f"{where}: {key} must be at most {maximum:,}, got {value!r}")
    return out


def choice_value(where: str, key: str, value: Any, choices: tuple[str, ...]) -> str:
    if value not in choices:
        raise ConfigError(f"{where}: unknown {key} {value!r} (choose from: {', '.join(choices)})")
    return value


def read_toml(path: Path, what: str) -> dict[str, Any]:
    """A TOML file's document; any reason it cannot be read or parsed is one ConfigError."""
    try:
        # non-blocking: opening a FIFO with no writer would wait for one for ever
        descriptor = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        with os.fdopen(descriptor, "rb") as file:
            if not stat.S_ISREG(os.fstat(descriptor).st_mode):
                raise ConfigError(f"{path}: not a {what} (not a regular file)")
            data = file.read(MAX_STUDY_FILE_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror or exc}") from None
    if len(data) > MAX_STUDY_FILE_BYTES:
        raise ConfigError(f"{path}: not a {what} (larger than {MAX_STUDY_FILE_BYTES} bytes)")
    try:
        text = data.decode("utf-8-sig")  # a leading byte-order mark (Notepad) is dropped
    except UnicodeDecodeError as exc:
        raise ConfigError(f"{path}: not a {what}: not UTF-8 text (byte {exc.start})") from None
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{path}: malformed TOML: {one_line(exc)}") from None
    except RecursionError:
        raise ConfigError(f"{path}: malformed TOML: nested too deeply") from None
    check_strings(doc, str(path))
    return doc


def check_strings(value: Any, where: str, key: str = "") -> None:
    """No control characters in any key or string: they end up in paths, logs, one-line
    errors and database text (PostgreSQL cannot store NUL at all). Keys are text (a dict
    given to the API may hold others)."""
    if isinstance(value, dict):
        for k, v in value.items():
            if not isinstance(k, str):
                raise ConfigError(f"{where}: {key or 'a table'}: keys must be text, got "
                                  f"{type(k).__name__}")
            check_strings(k, where, key)
            check_strings(v, where, f"{key}.{k}" if key else str(k))
    elif isinstance(value, list):
        for item in value:
            check_strings(item, where, key)
    elif isinstance(value, str) and not value.isprintable():
        raise ConfigError(f"{where}: {key or 'a key'}: control characters are not allowed "
                          f"(got {value[:60]!r})")
