"""Database URLs and engines: defaults, validation, masking, SQLite pragmas, PostgreSQL pool."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from sqlalchemy import text
from sqlalchemy.engine import URL, make_url
from sqlalchemy.pool import NullPool

from hpsearch.db.engine import (
    DEFAULT_URL,
    database_url,
    engine_kwargs,
    make_engine,
    mask_url,
    normalise_url,
)
from hpsearch.errors import ConfigError
from hpsearch.masking import mask_secrets
from tests.conftest import PostgresServer


@given(password=st.text(min_size=1, max_size=40))
def test_mask_url_hides_any_password(password: str) -> None:
    url = URL.create("postgresql+psycopg", username="hps", password=password, host="db.example",
                     port=5432, database="results").render_as_string(hide_password=False)
    masked = make_url(mask_url(url))
    assert masked.password == "***"
    assert (masked.username, masked.host, masked.port, masked.database) == (
        "hps", "db.example", 5432, "results")


# passwords as users type them: no quote, space, & or # (those need %-escapes in a URL anyway)
SECRET = st.text(st.characters(codec="utf-8", exclude_characters="'\"\\&#%+= \t\n\r\x0b\x0c"
                               "\x1c\x1d\x1e\x1f\x85\xa0\u2028\u2029"),
                 min_size=4, max_size=30).filter(lambda s: s.strip() == s and "*" not in s)


@given(password=SECRET.filter(lambda s: "@" not in s),  # a raw @ ends the userinfo
       key=st.sampled_from(["password", "sslpassword", "PASSWORD", "passwd", "auth_token",
                            "api_key", "client_secret"]))
def test_mask_url_hides_secrets_in_the_query_string(password: str, key: str) -> None:
    def url(secret: str) -> str:
        return (f"postgresql+psycopg://hps@db.example:5432/results?sslmode=require&{key}="
                f"{secret}&application_name=hp")
    masked = mask_url(url(password))
    assert masked == mask_url(url("other"))  # nothing of the secret shows, not even its length
    assert f"{key}=***" in masked and "sslmode=require" in masked and "db.example" in masked


@given(password=SECRET)
@example(password="00\u16800")  # a Unicode space (Ogham) inside: libpq reads one value
def test_mask_secrets_hides_libpq_strings_and_messages(password: str) -> None:
    quoted = password.replace("\\", "\\\\").replace("'", "\\'")
    for form in ("host=db port=5432 password={} user=hps",
                 "host=db password = '{} x' dbname=results",
                 "connect args {{'host': 'db', 'password': '{}'}}",
                 "cannot connect to postgresql://hps:{}@db/results (refused)",
                 "PGPASSWORD={} hpsearch run"):
        assert mask_secrets(form.format(quoted)) == mask_secrets(form.format("other")), form


def test_mask_secrets_removes_a_bare_echo_of_a_known_secret() -> None:
    url = "postgresql://hps@db/r?password=Tr0ub4dor"
    assert mask_secrets("no user with password Tr0ub4dor", url) == "no user with password ***"


def test_mask_secrets_leaves_other_keys_readable() -> None:
    text_in = "token_mlp_dim=16 sslmode=require passes=3 host=db"
    assert mask_secrets(text_in) == text_in


def test_mask_url_of_a_malformed_url_shows_nothing_of_it() -> None:
    assert mask_url("not a url:s3cret") == "<malformed URL>"


def test_database_url_prefers_the_option_then_the_environment(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HPSEARCH_DB", raising=False)
    assert database_url(None) == DEFAULT_URL
    monkeypatch.setenv("HPSEARCH_DB", "sqlite:///env.db")
    assert database_url(None) == "sqlite:///env.db"
    assert database_url("sqlite:///option.db") == "sqlite:///option.db"


@pytest.mark.parametrize("url", ["postgresql://hps:pw@h:5432/d", "postgres://hps:pw@h:5432/d"])
def test_plain_postgresql_urls_use_psycopg_3(url: str) -> None:
    assert normalise_url(url) == "postgresql+psycopg://hps:pw@h:5432/d"


@pytest.mark.parametrize("url", ["not a url", "://nothing", "mysql://u:pw@h/d"])
def test_malformed_or_unsupported_urls_are_config_errors(url: str) -> None:
    with pytest.raises(ConfigError) as error:
        normalise_url(url)
    assert "pw" not in str(error.value)


def test_a_bad_port_is_a_config_error_without_the_password() -> None:
    with pytest.raises(ConfigError) as error:
        normalise_url("postgresql+psycopg://hps:s3cret@h:notaport/d")
    assert "s3cret" not in str(error.value)


def test_engine_kwargs_per_backend() -> None:
    assert engine_kwargs("sqlite:///x.db")["poolclass"] is NullPool
    assert engine_kwargs("postgresql+psycopg://h/d")["pool_pre_ping"] is True


def test_sqlite_engine_sets_its_pragmas(sqlite_url: str) -> None:
    engine = make_engine(sqlite_url)
    try:
        with engine.connect() as conn:
            pragma = {name: conn.execute(text(f"PRAGMA {name}")).scalar()
                      for name in ("journal_mode", "foreign_keys", "busy_timeout")}
    finally:
        engine.dispose()
    assert pragma == {"journal_mode": "wal", "foreign_keys": 1, "busy_timeout": 60_000}


def test_postgres_engine_survives_a_server_restart(postgres_server: PostgresServer,
                                                   pg_url: str) -> None:
    engine = make_engine(pg_url)
    try:
        with engine.connect() as conn:
            assert conn.execute(text("SELECT 1")).scalar() == 1
        postgres_server.restart(down_s=0.2)
        with engine.connect() as conn:  # the pooled connection is dead; pre_ping replaces it
            assert conn.execute(text("SELECT 1")).scalar() == 1
    finally:
        engine.dispose()


def test_sqlite_files_opened_by_several_connections_at_once_all_switch_to_wal(
        tmp_path: Path) -> None:
    # Several workers' first start on a new file: SQLite refuses the switch to WAL at once
    # ("database is locked", no busy wait) where it sees a possible deadlock. A race, so 40 files.
    def open_and_read_mode(url: str, start: threading.Barrier) -> str:
        engine = make_engine(url)
        start.wait()
        with engine.connect() as conn:
            return conn.exec_driver_sql("PRAGMA journal_mode").scalar_one()

    with ThreadPoolExecutor(4) as pool:
        for round_number in range(40):
            url = f"sqlite:///{tmp_path / f'round-{round_number}.db'}"
            start = threading.Barrier(4, timeout=30)
            modes = [pool.submit(open_and_read_mode, url, start) for _ in range(4)]
            assert [mode.result() for mode in modes] == ["wal"] * 4
