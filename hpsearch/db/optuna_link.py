"""Our study rows are tied to Optuna's by id (hps_study.optuna_study_id), never by name.

Optuna's own tools can delete, rename or re-create a study behind our back (`optuna
delete-study`, optuna-dashboard's rename). Every command that opens a study checks the link
first, so results are never read as, or written into, a study they do not belong to. On
SQLite a re-created study often gets the deleted one's id back, so the Optuna study also
carries a marker naming our row (optuna_tables.MARKER_KEY), written with our row; migration
0004 marks the Optuna studies of rows recorded before.

optuna-dashboard renames a study by copying it: a new Optuna study with the old one's trials
(new ids, the same numbers, parameters and values), study system attributes (our marker among
them) dropped, then the old study deleted. Our rows' study then looks deleted; it is recognised
as renamed when another Optuna study holds every trial of ours, by number with the same sampled
parameter values (`successors`), and `hpsearch study rename OLD NEW` re-links our rows to it.
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, func, select

from hpsearch.db import optuna_tables as ot
from hpsearch.db.models import Study, Trial
from hpsearch.errors import HpsearchError


class BrokenLink(HpsearchError):
    """Optuna no longer has the study our rows were recorded for, under that name."""


def row_marker(row_id: int, created_at: datetime) -> str:
    """What the Optuna study of our row `row_id` carries as its marker."""
    if created_at.tzinfo is None:  # SQLite hands back naive UTC
        created_at = created_at.replace(tzinfo=UTC)
    return f"{row_id}/{created_at.astimezone(UTC).isoformat()}"


@dataclass(frozen=True)
class LinkProblem:
    kind: str  # "deleted", "re-created" or "renamed" (in Optuna)
    message: str  # one line: what happened and what to run
    # renamed: the Optuna studies (id -> name) that hold our rows' trials now; one, unless the
    # renamed study was also copied
    successors: dict[int, str] = field(default_factory=dict)


def link_problem(conn: Connection, optuna: dict[int, ot.OptunaStudy], row: Any
                 ) -> LinkProblem | None:
    """None when Optuna's study behind our row `row` (an hps_study row) exists, is called
    row.name and is the one the row was recorded for; else what happened and what to run.
    `optuna`: every Optuna study (optuna_tables.optuna_studies)."""
    name, linked = row.name, row.optuna_study_id
    theirs = optuna.get(linked)
    if theirs is not None and theirs.marker == row_marker(row.id, row.created_at):
        return None if theirs.name == name else _renamed(name, {linked: theirs.name})
    successors = renamed_copies(conn, optuna, row)
    if successors:
        return _renamed(name, successors)
    drop = f"run `hpsearch study delete {name!r} --yes` to drop"
    others = [i for i, s in optuna.items() if s.name == name]
    if others:
        return LinkProblem("re-created", (
            f"study {name!r} was deleted and re-created in Optuna (Optuna study id "
            f"{others[0]} is not the one its results were recorded for); {drop} the old "
            "results (Optuna's new study stays)"))
    return LinkProblem("deleted", f"study {name!r} was deleted in Optuna (study id "
                                  f"{linked} is gone); {drop} its orphaned results")


def _renamed(name: str, successors: dict[int, str]) -> LinkProblem:
    if len(successors) == 1:
        (new,) = successors.values()
        return LinkProblem("renamed", (
            f"study {name!r} was renamed to {new!r} in Optuna; run "
            f"`hpsearch study rename {name!r} {new!r}` to follow it"), successors)
    names = ", ".join(repr(n) for n in sorted(successors.values()))
    return LinkProblem("renamed", (
        f"study {name!r} was renamed in Optuna and its trials now live in several studies "
        f"({names}); run `hpsearch study rename {name!r} NEW` with one of them to follow it"),
        successors)


def renamed_copies(conn: Connection, optuna: dict[int, ot.OptunaStudy], row: Any
                   ) -> dict[int, str]:
    """The Optuna studies (id -> name) that optuna-dashboard's rename (or a copy) made of our
    row's study: under another name, not tied to another row of ours (no marker, or ours),
    holding every trial of ours by number with the same sampled parameter values, up to its
    last (ours after it were begun while the dashboard copied the study). A study
    with our own name is a re-creation, never a rename; without trial rows there is nothing
    to recognise a marker-less copy by."""
    marker = row_marker(row.id, row.created_at)
    candidates = [i for i, s in optuna.items() if i != row.optuna_study_id
                  and s.name != row.name and s.marker in (None, marker)]
    if not candidates:
        return {}
    ours = {t.number: {n: t.params.get(n) for n in t.sampled or ()}
            for t in conn.execute(select(Trial.number, Trial.sampled, Trial.params)
                                  .where(Trial.study_id == row.id))}
    if not ours:
        return {i: optuna[i].name for i in candidates if optuna[i].marker == marker}
    # the copy holds the trials the dashboard read: ours numbered after its last were begun
    # while it copied (their Optuna trials went with the old study), so they are not asked for
    last = dict(conn.execute(select(ot.trials.c.study_id, func.max(ot.trials.c.number))
                             .where(ot.trials.c.study_id.in_(candidates))
                             .group_by(ot.trials.c.study_id)).all())
    theirs: dict[int, dict[int, dict[str, Any]]] = defaultdict(dict)
    params = ot.trial_params
    for t in conn.execute(
            select(ot.trials.c.study_id, ot.trials.c.number, params.c.param_name,
                   params.c.param_value, params.c.distribution_json)
            .outerjoin(params, params.c.trial_id == ot.trials.c.trial_id)
            .where(ot.trials.c.study_id.in_(candidates), ot.trials.c.number.in_(ours))):
        trial = theirs[t.study_id].setdefault(t.number, {})
        if t.param_name is not None:
            trial[t.param_name] = _external(t.param_value, t.distribution_json)
    held = {i: [n for n in ours if n <= last[i]] for i in last}
    return {i: optuna[i].name for i in candidates if held.get(i) and all(
        _same_params(ours[n], theirs[i].get(n)) for n in held[i])}


def renamed_from(conn: Connection, optuna: dict[int, ot.OptunaStudy], name: str) -> str | None:
    """The name of our row whose study Optuna renamed to `name`, if any."""
    for row in conn.execute(select(Study.__table__).where(Study.name != name)).all():
        problem = link_problem(conn, optuna, row)
        if problem is not None and name in problem.successors.values():
            return str(row.name)
    return None


def _external(internal: float, distribution_json: str) -> Any:
    """A parameter's value as sampled, from Optuna's stored form (a categorical is stored as
    the index of its choice)."""
    distribution = json.loads(distribution_json)
    if distribution["name"] == "CategoricalDistribution":
        return distribution["attributes"]["choices"][int(internal)]
    return internal


def _same_params(ours: dict[str, Any], theirs: dict[str, Any] | None) -> bool:
    if theirs is None or ours.keys() != theirs.keys():
        return False
    return all(a == b or (isinstance(a, float | int) and isinstance(b, float | int)
                          and math.isclose(a, b, rel_tol=1e-12))
               for a, b in ((ours[k], theirs[k]) for k in ours))


def refuse_foreign(conn: Connection, name: str) -> None:
    """For a name with no row of ours: an Optuna study of that name holding trials was made by
    another tool (`optuna.copy_study`, Optuna's own scripts). Adopted, its trials would count
    towards n_trials in Optuna but be missing from every hpsearch view; so it is refused. One
    with no trials (a creation interrupted before our row was written) is safe to adopt."""
    if not ot.has_optuna_tables(conn):
        return
    found = conn.execute(select(ot.studies.c.study_id).where(ot.studies.c.study_name == name)
                         ).scalar()
    if found is None:
        return
    count = conn.scalar(select(func.count()).select_from(ot.trials)
                        .where(ot.trials.c.study_id == found))
    if count:
        raise HpsearchError(
            f"study {name!r} exists in Optuna's tables with {count} trial(s) but was not made "
            "by hpsearch, which cannot show or continue them: give the hpsearch study another "
            "name (Optuna's stays as it is)")


def check_link(conn: Connection, row: Any) -> None:
    """Raise BrokenLink (one line) unless Optuna's study behind our row is still its own."""
    problem = link_problem(conn, ot.optuna_studies(conn), row)
    if problem is not None:
        raise BrokenLink(problem.message)
