"""Alembic environment for hpsearch's own tables (hps_*), beside Optuna's in the same database.

hpsearch.db.migrate (and `hpsearch db ...`) runs it with an open connection. To draft a new
revision after changing hpsearch/db/models.py, point $HPSEARCH_DB at a database at head
(`hpsearch db upgrade`), then:

    python -c "from alembic import command; from hpsearch.db.migrate import alembic_config; \
command.revision(alembic_config(), 'what changed', autogenerate=True, rev_id='0003')"

and edit the draft into something readable (see versions/0001_initial.py); `hpsearch db check`
then confirms the models and the migrations agree.
"""

from __future__ import annotations

from alembic import context
from sqlalchemy import Connection

from hpsearch.db.migrate import context_options
from hpsearch.db.models import Base
from hpsearch.db.session import url_scope


def run_migrations(connection: Connection) -> None:
    context.configure(connection=connection, target_metadata=Base.metadata, **context_options())
    with context.begin_transaction():
        context.run_migrations()


if context.is_offline_mode():
    raise SystemExit("hpsearch migrations run against a database; offline (--sql) mode is not "
                     "supported")
if context.config.attributes.get("connection") is not None:
    run_migrations(context.config.attributes["connection"])
else:  # $HPSEARCH_DB, with the same SQLite pragmas and PostgreSQL settings as everywhere else
    with url_scope(None) as conn:
        run_migrations(conn)
