"""Optuna's own tables, as far as hpsearch reads or writes them with SQL.

Optuna's schema is stable across its releases since v3.2 (`alembic_version` v3.2.0.a); only the
columns used here are declared. Its foreign keys have no ON DELETE CASCADE (Optuna cascades in
its ORM), so deleting a study deletes children first: TRIAL_CHILDREN, trials, STUDY_CHILDREN.
"""

from __future__ import annotations

import json
import re
from collections import defaultdict
from collections.abc import Collection
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import (
    Connection,
    Float,
    String,
    and_,
    case,
    cast,
    column,
    func,
    insert,
    inspect,
    or_,
    select,
    table,
    text,
    true,
    update,
)
from sqlalchemy.sql.expression import ScalarSelect

from hpsearch.db.session import dialect_insert

studies = table("studies", column("study_id"), column("study_name"))
trials = table("trials", column("trial_id"), column("study_id"), column("number"),
               column("state"), column("datetime_start"), column("datetime_complete"))
trial_params = table("trial_params", column("trial_id"), column("param_name"),
                     column("param_value"), column("distribution_json"))
trial_heartbeats = table("trial_heartbeats", column("trial_id"), column("heartbeat"))
study_system_attributes = table("study_system_attributes", column("study_id"), column("key"),
                                column("value_json"))
study_user_attributes = table("study_user_attributes", column("study_id"), column("key"),
                              column("value_json"))
trial_user_attributes = table("trial_user_attributes", column("trial_id"), column("key"),
                              column("value_json"))
version_info = table("version_info", column("schema_version"), column("library_version"))

# Optuna's TrialState names, as its `trials.state` column holds them
TRIAL_STATES = ("RUNNING", "WAITING", "COMPLETE", "PRUNED", "FAIL")
TRIAL_CHILDREN = ("trial_heartbeats", "trial_intermediate_values", "trial_values",
                  "trial_params", "trial_system_attributes", "trial_user_attributes")
STUDY_CHILDREN = ("study_directions", "study_user_attributes", "study_system_attributes")
# A study system attribute naming the hps_study row the Optuna study belongs to. Needed because
# SQLite re-uses the id of a deleted study: a study deleted and re-created in Optuna often gets
# the old id back, so the id alone cannot tell the two apart.
MARKER_KEY = "hpsearch:study_row"
# When a worker last checked the study for dead trials (seconds since the epoch, its clock): one
# check per study per interval, whatever the number of workers (claim_stale_check).
STALE_CHECK_KEY = "hpsearch:stale_check_at"
# An hours budget (hpsearch/search/hours.py): the search's limits that `hpsearch run` publishes
# to the workers (a system attribute: machinery), and what the run planned and used (a user
# attribute, so that optuna-dashboard shows it too; the report reads it)
BUDGET_LIMITS_KEY = "hpsearch:budget_limits"
BUDGET_USE_KEY = "hpsearch:budget_use"
# Where Optuna keeps Study.metric_names (optuna/study/study.py, _SYSTEM_ATTR_METRIC_NAMES)
METRIC_NAMES_KEY = "study:metric_names"
# A study's central stop or pause (written by hpsearch.search.control, read here for the views)
CONTROL_ATTR = "hpsearch.control"
# optuna-dashboard's notes (optuna_dashboard/_note.py, 0.12-0.21): a study system attribute
# holding the note's version, and its Markdown in chunks of NOTE_CHUNK characters; a trial's
# note is the study's attribute too, keyed by the Optuna trial id. hpsearch keeps its notes
# there as well, so the dashboard shows ours and `hpsearch show` the dashboard's.
NOTE_CHUNK = 2045
NOTE_KEY = re.compile(r"dashboard:(?:(\d+):)?note_(?:ver|str:(\d+))")
# Optuna's default grace period: a study file without [workers] grace_period uses 120 s too.
DEFAULT_GRACE_S = 120


@dataclass(frozen=True)
class OptunaStudy:
    name: str
    marker: str | None  # MARKER_KEY's value; None for studies hpsearch did not create


def has_optuna_tables(conn: Connection) -> bool:
    return inspect(conn).has_table("studies")


def foreign_tables(conn: Connection) -> list[str]:
    """Tables under Optuna's names that are not Optuna's: another application's in the same
    database (its `studies` without Optuna's columns, its own Alembic's `alembic_version`,
    where Optuna keeps `version_info` beside its own). Optuna would fail on them only after
    creating its other tables; checked before anything is made."""
    inspector = inspect(conn)
    names = set(inspector.get_table_names())
    found = [t.name for t in (studies, trials, trial_params, trial_heartbeats,
                              study_system_attributes, study_user_attributes,
                              trial_user_attributes, version_info)
             if t.name in names
             and not {c.name for c in t.columns} <= {c["name"] for c in
                                                     inspector.get_columns(t.name)}]
    if "alembic_version" in names and "version_info" not in names:
        found.append("alembic_version")
    return sorted(found)


def optuna_studies(conn: Connection) -> dict[int, OptunaStudy]:
    """Every Optuna study by id, with its hpsearch marker."""
    if not has_optuna_tables(conn):
        return {}
    attrs = study_system_attributes
    rows = conn.execute(
        select(studies.c.study_id, studies.c.study_name, attrs.c.value_json)
        .outerjoin(attrs, and_(attrs.c.study_id == studies.c.study_id,
                               attrs.c.key == MARKER_KEY)))
    return {row.study_id: OptunaStudy(row.study_name, json.loads(row.value_json)
                                      if row.value_json is not None else None)
            for row in rows}


def set_marker(conn: Connection, optuna_study_id: int, marker: str) -> None:
    """Tie Optuna's study to our row (replacing a marker copied from another study)."""
    set_study_attr(conn, optuna_study_id, MARKER_KEY, marker, system=True)


def set_study_attr(conn: Connection, optuna_study_id: int, key: str, value: object, *,
                   system: bool = False) -> None:
    """Optuna's Storage.set_study_user_attr (or `system` attr), on the caller's connection
    and transaction."""
    attrs = study_system_attributes if system else study_user_attributes
    stmt = dialect_insert(conn)(attrs).values(study_id=optuna_study_id, key=key,
                                              value_json=json.dumps(value))
    conn.execute(stmt.on_conflict_do_update(index_elements=["study_id", "key"],
                                            set_={"value_json": stmt.excluded.value_json}))


def dashboard_notes(conn: Connection, optuna_study_ids: Collection[int] | None = None
                    ) -> dict[tuple[int, int | None], str]:
    """The notes optuna-dashboard shows (of the given studies, else of all): by (Optuna study
    id, Optuna trial id, or None for the study's own note). A note cleared there is ""."""
    attrs = study_system_attributes
    query = select(attrs.c.study_id, attrs.c.key, attrs.c.value_json).where(
        attrs.c.key.like("dashboard:%"))
    if optuna_study_ids is not None:
        query = query.where(attrs.c.study_id.in_(list(optuna_study_ids)))
    elif not has_optuna_tables(conn):  # our tables only (`hpsearch db upgrade`)
        return {}
    versioned: set[tuple[int, int | None]] = set()
    chunks: dict[tuple[int, int | None], dict[int, str]] = defaultdict(dict)
    for row in conn.execute(query):
        match = NOTE_KEY.fullmatch(row.key)
        if match is None:  # the dashboard's other attributes
            continue
        scope = (row.study_id, None if match[1] is None else int(match[1]))
        if match[2] is None:
            versioned.add(scope)
        else:
            chunks[scope][int(match[2])] = json.loads(row.value_json)
    # the dashboard shows a note once its version is set, the chunks in their order
    return {scope: "".join(text for _, text in sorted(chunks[scope].items()))
            for scope in versioned}


def save_dashboard_note(conn: Connection, optuna_study_id: int, trial_id: int | None,
                        body: str) -> None:
    """optuna_dashboard.save_note on the caller's connection and transaction: the next
    version (so a dashboard page editing the older one is told of the change), the body's
    chunks, and the chunks of a longer earlier note emptied, as the dashboard does."""
    scope = "dashboard:" if trial_id is None else f"dashboard:{trial_id}:"
    version_key, prefix = f"{scope}note_ver", f"{scope}note_str:"
    attrs = study_system_attributes
    stored = dict(conn.execute(select(attrs.c.key, attrs.c.value_json).where(
        attrs.c.study_id == optuna_study_id,
        or_(attrs.c.key == version_key,
            attrs.c.key.startswith(prefix, autoescape=True)))).all())
    version = int(json.loads(stored.pop(version_key, "0"))) + 1
    parts = [body[i:i + NOTE_CHUNK] for i in range(0, len(body), NOTE_CHUNK)]
    set_study_attr(conn, optuna_study_id, version_key, version, system=True)
    for i in range(max(len(parts), len(stored))):
        set_study_attr(conn, optuna_study_id, f"{prefix}{i}",
                       parts[i] if i < len(parts) else "", system=True)


def claim_stale_check(conn: Connection, optuna_study_id: int, now: float,
                      interval: float) -> bool:
    """True for the one caller that may check the study for dead trials now: the last check
    (by any worker) is `interval` seconds old or more, or there was none. A compare-and-set on
    one row (an upsert that updates only an old enough value), so that of N workers asking at
    once one wins; the others cost one statement that changes nothing. Workers' clocks only
    need to agree to within a fraction of the interval."""
    attrs = study_system_attributes
    stmt = dialect_insert(conn)(attrs).values(study_id=optuna_study_id, key=STALE_CHECK_KEY,
                                              value_json=json.dumps(now))
    return conn.execute(stmt.on_conflict_do_update(
        index_elements=["study_id", "key"], set_={"value_json": stmt.excluded.value_json},
        where=cast(attrs.c.value_json, Float) <= now - interval).returning(attrs.c.key)
    ).first() is not None


def attr_value(optuna_study_id: Any, key: str, *, system: bool = False) -> ScalarSelect[Any]:
    """A study attribute's JSON text (NULL where absent) as a scalar subquery; `optuna_study_id`
    an id or a column, so that another statement reads it along."""
    attrs = study_system_attributes if system else study_user_attributes
    return select(attrs.c.value_json).where(attrs.c.study_id == optuna_study_id,
                                            attrs.c.key == key).scalar_subquery()


def study_state(conn: Connection, optuna_study_id: int, keys: tuple[str, ...] = (),
                system_keys: tuple[str, ...] = ()) -> tuple[dict[str, int], dict[str, Any]]:
    """The study's trials counted by state name (TRIAL_STATES), and some of its user
    attributes (`keys`) and system attributes, those present: one statement, one snapshot
    (Optuna's get_n_trials loads every trial of the state it counts, and its storage reads
    each kind of attribute apart)."""
    state = cast(trials.c.state, String)  # an enum type on PostgreSQL, text on SQLite
    row = conn.execute(select(*(func.count(case((state == name, 1))) for name in TRIAL_STATES),
                              *_attr_values(optuna_study_id, keys, system_keys))
                       .where(trials.c.study_id == optuna_study_id)).one()
    counts = dict(zip(TRIAL_STATES, row[:len(TRIAL_STATES)], strict=True))
    return counts, _present((*keys, *system_keys), row[len(TRIAL_STATES):])


def _attr_values(optuna_study_id: int, keys: tuple[str, ...], system_keys: tuple[str, ...]
                 ) -> list[ScalarSelect[Any]]:
    return [*(attr_value(optuna_study_id, key) for key in keys),
            *(attr_value(optuna_study_id, key, system=True) for key in system_keys)]


def _present(keys: tuple[str, ...], values: Any) -> dict[str, Any]:
    return {key: json.loads(value) for key, value in zip(keys, values, strict=True)
            if value is not None}


def trial_state(conn: Connection, trial_id: int) -> str:
    """A trial's state name (RUNNING, COMPLETE, ...): one statement (Optuna's get_trial loads
    the whole trial: seven)."""
    return conn.execute(select(cast(trials.c.state, String)).where(
        trials.c.trial_id == trial_id)).scalar_one()


def study_attrs(conn: Connection, optuna_study_id: int, keys: tuple[str, ...] = (),
                system_keys: tuple[str, ...] = ()) -> dict[str, Any]:
    """Some user attributes (`keys`) and system attributes of a study, those present, in one
    statement (Optuna's storage reads the study row, then every attribute of one kind)."""
    return _present((*keys, *system_keys), conn.execute(
        select(*_attr_values(optuna_study_id, keys, system_keys))).one())


def set_trial_user_attrs(conn: Connection, trial_id: int, values: dict[str, Any]) -> None:
    """Optuna's Trial.set_user_attr for several attributes in one statement (Optuna's is two
    per attribute)."""
    if not values:
        return
    stmt = dialect_insert(conn)(trial_user_attributes).values(
        [{"trial_id": trial_id, "key": key, "value_json": json.dumps(value)}
         for key, value in values.items()])
    conn.execute(stmt.on_conflict_do_update(index_elements=["trial_id", "key"],
                                            set_={"value_json": stmt.excluded.value_json}))


def record_heartbeat(conn: Connection, trial_id: int) -> None:
    """Optuna's RDBStorage.record_heartbeat in one statement (its own takes four): the trial's
    heartbeat row, at the database's clock."""
    now = func.current_timestamp()
    stmt = dialect_insert(conn)(trial_heartbeats).values(trial_id=trial_id, heartbeat=now)
    conn.execute(stmt.on_conflict_do_update(index_elements=["trial_id"], set_={"heartbeat": now}))


def stale_trial_ids(conn: Connection, optuna_study_id: int, grace_s: float) -> list[int]:
    """Optuna's RDBStorage._get_stale_trial_ids in one statement (its own takes three): the
    study's running trials whose heartbeat is older than the grace period by the database's
    clock; one without a heartbeat yet is not stale."""
    rows = conn.execute(
        select(trials.c.trial_id, trial_heartbeats.c.heartbeat,
               func.current_timestamp().label("now"))
        .join(trial_heartbeats, trial_heartbeats.c.trial_id == trials.c.trial_id)
        .where(trials.c.study_id == optuna_study_id, cast(trials.c.state, String) == "RUNNING"))
    return [row.trial_id for row in rows if _age_s(row.now, row.heartbeat) > grace_s]


def live_trials(conn: Connection, optuna_id: int, grace_s: float) -> list[int]:
    """Numbers of the study's RUNNING trials whose worker showed a sign of life (a heartbeat,
    else the trial's start) within the grace period: a worker is still at it."""
    return [number for _, number in _live(conn, grace_s, trials.c.study_id == optuna_id)]


def studies_with_live_trials(conn: Connection, grace_s: float = DEFAULT_GRACE_S) -> list[str]:
    """Names of every study with a live trial (see live_trials), for database-wide changes."""
    if not has_optuna_tables(conn):
        return []
    names = dict(conn.execute(select(studies.c.study_id, studies.c.study_name)).all())
    return sorted({names[study_id] for study_id, _ in _live(conn, grace_s, true())})


def _live(conn: Connection, grace_s: float, where: Any) -> list[tuple[int, int]]:
    last_sign = func.coalesce(trial_heartbeats.c.heartbeat, trials.c.datetime_start)
    rows = conn.execute(
        select(trials.c.study_id, trials.c.number, last_sign.label("seen"))
        .outerjoin(trial_heartbeats, trial_heartbeats.c.trial_id == trials.c.trial_id)
        .where(where,
               # an enum type on PostgreSQL, text on SQLite
               cast(trials.c.state, String) == "RUNNING")).all()
    # compared with the database's own clock, as Optuna's stale-trial check does
    now = conn.execute(select(func.current_timestamp())).scalar_one()
    return [(row.study_id, row.number) for row in rows
            if row.seen is not None and _age_s(now, row.seen) < grace_s]


def _age_s(now: Any, then: Any) -> float:
    now, then = (datetime.fromisoformat(v) if isinstance(v, str) else v for v in (now, then))
    return (now.replace(tzinfo=None) - then.replace(tzinfo=None)).total_seconds()


def add_running_trial(conn: Connection, optuna_study_id: int, number: int, started: datetime,
                      params: dict[str, Any], space: dict[str, dict[str, Any]]) -> int:
    """Give Optuna's study a RUNNING trial `number` with the sampled `params` (`space`: their
    distributions' JSON, as the spec holds them); its id. For a trial of ours that Optuna
    lost (begun while optuna-dashboard copied the study it then deleted), to be resumed."""
    trial_id = conn.execute(insert(trials).values(
        number=number, study_id=optuna_study_id, state=text("'RUNNING'"),
        datetime_start=started).returning(trials.c.trial_id)).scalar_one()
    for name, value in params.items():
        choices = space[name]["attributes"].get("choices")
        internal = choices.index(value) if space[name]["name"] == "CategoricalDistribution" \
            else float(value)
        conn.execute(insert(trial_params).values(
            trial_id=trial_id, param_name=name, param_value=internal,
            distribution_json=json.dumps(space[name])))
    return trial_id


def hand_running_to_heartbeat_check(conn: Connection, optuna_study_id: int) -> None:
    """Give each RUNNING trial of the study that has no heartbeat one dated at its start, so
    that the heartbeat check fails it and queues its retry (which resumes from its checkpoint)
    as for a dead worker's. For the copy optuna-dashboard makes when it renames a study: its
    running trials have new ids that no worker knows, and no heartbeat, which the check alone
    would leave running for ever."""
    beating = select(trial_heartbeats.c.trial_id).where(
        trial_heartbeats.c.trial_id == trials.c.trial_id).exists()
    conn.execute(insert(trial_heartbeats).from_select(
        ["trial_id", "heartbeat"],
        select(trials.c.trial_id, trials.c.datetime_start).where(
            trials.c.study_id == optuna_study_id, cast(trials.c.state, String) == "RUNNING",
            ~beating)))


def fail_running_trials(conn: Connection, optuna_study_id: int) -> list[int]:
    """Mark the study's RUNNING trials failed (a copy's: no worker runs them); their numbers."""
    running = cast(trials.c.state, String) == "RUNNING"
    numbers = list(conn.scalars(select(trials.c.number).where(
        trials.c.study_id == optuna_study_id, running).order_by(trials.c.number)))
    if numbers:
        conn.execute(update(trials).where(trials.c.study_id == optuna_study_id, running)
                     # an untyped literal: PostgreSQL's column is an enum
                     .values(state=text("'FAIL'"), datetime_complete=func.current_timestamp()))
    return numbers


def study_user_attr(conn: Connection, key: str) -> dict[int, Any]:
    """One user attribute of every Optuna study that has it, by study id."""
    if not has_optuna_tables(conn):
        return {}
    attrs = study_user_attributes
    return {row.study_id: json.loads(row.value_json) for row in conn.execute(
        select(attrs.c.study_id, attrs.c.value_json).where(attrs.c.key == key))}
