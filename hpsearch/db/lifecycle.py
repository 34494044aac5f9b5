"""Study lifecycle: delete, rename, copy, and the orphan check of `db check`.

Delete and rename change both halves of a study (Optuna's tables and ours) with SQL on ONE
connection in ONE transaction, so they either happen together or not at all; Optuna's foreign
keys do not cascade, so its rows are deleted children first (optuna_tables.TRIAL_CHILDREN). Copy
goes through `optuna.copy_study` (a real Optuna study in the target, trial ids assigned by
Optuna) and then writes our rows in one transaction; should that fail, the Optuna copy is
deleted again, so nothing half-copied stays behind.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Connection, column, delete, func, insert, select, table, update

from hpsearch.db import optuna_tables as ot
from hpsearch.db.engine import mask_url, normalise_url
from hpsearch.db.migrate import ensure_schema, reading, require_schema
from hpsearch.db.models import EnsembleEvaluation, Epoch, Evaluation, Study, Trial, study_named
from hpsearch.db.optuna_link import LinkProblem, link_problem, renamed_from, row_marker
from hpsearch.db.optuna_tables import set_marker
from hpsearch.db.session import url_scope
from hpsearch.errors import HpsearchError
from hpsearch.spec import StudyConfig, WorkerOptions, dimension_json, stored_objectives

COPIED_RUNNING = "running when the study was copied (its worker had died): not resumed in the copy"


@contextmanager
def write_transaction(url: str) -> Iterator[Connection]:
    """One connection, one write transaction (the session module's), committed at the end, to
    a database whose schema is at head: the checks (is a worker running? is the new name
    free?) and the writes see the same database, as no other writer can slip in between."""
    require_schema(url)
    with url_scope(url, write=True) as conn:
        yield conn


@dataclass(frozen=True)
class Halves:
    """A study name's row in our table and its Optuna study, either possibly missing."""

    name: str
    ours: Any  # the hps_study row, or None
    # the Optuna study called `name`: our row's own when the tie is intact, else one without
    # a row of ours (None when there is none, or when it is not our row's: re-created)
    optuna_id: int | None
    problem: LinkProblem | None  # what broke the tie with Optuna's study; None if intact
    renamed_from: str | None = None  # our row whose study Optuna renamed to `name`


def _halves(conn: Connection, name: str) -> Halves:
    ours = conn.execute(select(Study.__table__).where(study_named(name))).first()
    optuna = ot.optuna_studies(conn)
    if ours is not None:
        problem = link_problem(conn, optuna, ours)
        return Halves(name, ours, ours.optuna_study_id if problem is None else None, problem)
    by_name = next((i for i, s in optuna.items() if s.name == name), None)
    return Halves(name, None, by_name, None, renamed_from(conn, optuna, name))


def _require_some(conn: Connection, halves: Halves) -> None:
    if halves.ours is None and halves.optuna_id is None:
        raise HpsearchError(f"no study {halves.name!r} in {mask_url(str(conn.engine.url))}, "
                            "neither hpsearch's nor Optuna's")


def grace_period_s(ours: Any) -> float:
    """The grace period of the study of our row `ours` (None: the default)."""
    return float(ours.settings["workers"]["grace_period"] if ours is not None
                 else WorkerOptions.grace_period)


def _refuse_if_running(conn: Connection, halves: Halves, doing: str,
                       optuna_id: int | None = None) -> None:
    """Refuse while a worker runs a trial of Optuna study `optuna_id` (default: the halves')."""
    optuna_id = halves.optuna_id if optuna_id is None else optuna_id
    if optuna_id is None:
        return
    grace = grace_period_s(halves.ours)
    live = ot.live_trials(conn, optuna_id, grace)
    if live:
        shown = ", ".join(str(n) for n in sorted(live)[:5]) + (", ..." if len(live) > 5 else "")
        raise HpsearchError(
            f"cannot {doing} study {halves.name!r}: its workers are still running "
            f"(trial {shown} sent a heartbeat within the last {grace:.0f} s); "
            "stop them first, or wait for the study to finish")


def _refuse_if_renamed(halves: Halves) -> None:
    """A study Optuna renamed by copying is split: our rows under the old name, Optuna's trials
    under the new one. Deleting either half would take the other's results with it."""
    if halves.problem is not None and halves.problem.kind == "renamed":
        raise HpsearchError(f"cannot delete study {halves.name!r}: {halves.problem.message}, "
                            "then delete it under its new name")
    if halves.renamed_from is not None:
        raise HpsearchError(
            f"cannot delete study {halves.name!r}: it is hpsearch's study "
            f"{halves.renamed_from!r} renamed in Optuna; run `hpsearch study rename "
            f"{halves.renamed_from!r} {halves.name!r}` to follow it, then delete it")


def _delete_optuna_study(conn: Connection, optuna_id: int) -> int:
    """Delete one Optuna study and everything under it; returns its number of trials."""
    trial_ids = select(ot.trials.c.trial_id).where(ot.trials.c.study_id == optuna_id)
    for name in ot.TRIAL_CHILDREN:
        child = table(name, column("trial_id"))
        conn.execute(delete(child).where(child.c.trial_id.in_(trial_ids)))
    deleted = conn.execute(delete(ot.trials).where(ot.trials.c.study_id == optuna_id)).rowcount
    for name in ot.STUDY_CHILDREN:
        child = table(name, column("study_id"))
        conn.execute(delete(child).where(child.c.study_id == optuna_id))
    conn.execute(delete(ot.studies).where(ot.studies.c.study_id == optuna_id))
    return deleted or 0


def _delete_our_study(conn: Connection, study_id: int) -> int:
    """Delete our study row and its trials, epochs, evaluations and ensembles; returns its
    trial count.
    Explicit, children first, rather than trusting ON DELETE CASCADE: SQLite honours it only
    on connections that enabled foreign keys."""
    trial_ids = select(Trial.id).where(Trial.study_id == study_id)
    conn.execute(delete(EnsembleEvaluation).where(EnsembleEvaluation.study_id == study_id))
    conn.execute(delete(Evaluation).where(Evaluation.trial_id.in_(trial_ids)))
    conn.execute(delete(Epoch).where(Epoch.trial_id.in_(trial_ids)))
    deleted = conn.execute(delete(Trial).where(Trial.study_id == study_id)).rowcount
    conn.execute(delete(Study).where(Study.id == study_id))
    return deleted or 0


def check_deletable(url: str, name: str) -> None:
    """delete_study's checks (the study exists, nothing of it runs), without deleting: made
    before the user is asked to confirm."""
    with reading(url) as conn:
        _deletable(conn, name)


def _deletable(conn: Connection, name: str) -> Halves:
    halves = _halves(conn, name)
    _require_some(conn, halves)
    _refuse_if_renamed(halves)
    _refuse_if_running(conn, halves, "delete")
    return halves


def delete_study(url: str, name: str) -> str:
    """Delete study `name` from hpsearch's tables and Optuna's, in one transaction. Either half
    may already be gone (an orphan); an Optuna study that re-used the name is not touched, and
    neither half of a study renamed in Optuna but not yet followed."""
    with write_transaction(url) as conn:
        halves = _deletable(conn, name)
        ours = _delete_our_study(conn, halves.ours.id) if halves.ours is not None else None
        theirs = (_delete_optuna_study(conn, halves.optuna_id)
                  if halves.optuna_id is not None else None)
    parts = [f"{ours} trial rows of hpsearch" if ours is not None else None,
             f"Optuna's study (id {halves.optuna_id}, {theirs} trials)"
             if theirs is not None else None]
    return f"deleted study {name!r}: " + " and ".join(p for p in parts if p)


def rename_study(url: str, old: str, new: str) -> str:
    """Rename both halves of a study in one transaction. When Optuna's half was already
    renamed to `new` (in place, or by optuna-dashboard's copy), ours follows it."""
    with write_transaction(url) as conn:
        halves = _halves(conn, old)
        _require_some(conn, halves)
        successors = halves.problem.successors if halves.problem is not None else {}
        follow = next((i for i, n in successors.items() if n == new), None)
        if halves.problem is not None and follow is None:
            raise HpsearchError(halves.problem.message)
        taken = _halves(conn, new)
        if taken.ours is not None or taken.optuna_id not in (None, follow):
            raise HpsearchError(f"cannot rename {old!r} to {new!r}: a study called {new!r} "
                                "already exists")
        _refuse_if_running(conn, halves, "rename", follow)
        if follow is not None:
            _relink(conn, halves.ours, follow)
        elif halves.optuna_id is not None:
            conn.execute(update(ot.studies).where(ot.studies.c.study_id == halves.optuna_id)
                         .values(study_name=new))
        if halves.ours is not None:
            conn.execute(update(Study).where(Study.id == halves.ours.id).values(name=new))
    return (f"renamed study {old!r} to {new!r}"
            + (" (following Optuna)" if follow is not None else ""))


def _relink(conn: Connection, ours: Any, optuna_id: int) -> None:
    """Tie our row and its trial rows to Optuna study `optuna_id`, which holds the same trials
    under the same numbers (optuna-dashboard's rename copies them in order), and give it back
    what the copy dropped: our marker and the metric names."""
    if optuna_id == ours.optuna_study_id:  # renamed in place: the ties still hold
        return
    trial_ids = dict(conn.execute(select(ot.trials.c.number, ot.trials.c.trial_id)
                                  .where(ot.trials.c.study_id == optuna_id)).all())
    space = {name: dimension_json(dim) for name, dim in
             StudyConfig.from_stored(ours.name, ours.spec, ours.settings).space.items()}
    for trial in conn.execute(select(Trial.number, Trial.id, Trial.params, Trial.sampled,
                                     Trial.started_at).where(Trial.study_id == ours.id)).all():
        if trial.number not in trial_ids:  # begun while the dashboard copied: lost there
            trial_ids[trial.number] = ot.add_running_trial(
                conn, optuna_id, trial.number, trial.started_at,
                {name: trial.params[name] for name in trial.sampled or ()}, space)
        conn.execute(update(Trial).where(Trial.id == trial.id)
                     .values(optuna_trial_id=trial_ids[trial.number]))
    conn.execute(update(Study).where(Study.id == ours.id).values(optuna_study_id=optuna_id))
    set_marker(conn, optuna_id, row_marker(ours.id, ours.created_at))
    ot.set_study_attr(conn, optuna_id, ot.METRIC_NAMES_KEY,
                      [o.measure for o in stored_objectives(ours.spec)], system=True)
    # trials renamed while they ran (or lost, above): their workers could not go on; resumed
    # as a dead worker's are
    ot.hand_running_to_heartbeat_check(conn, optuna_id)


def copy_study(url: str, name: str, new: str, to_url: str | None = None) -> str:
    """Copy study `name` as `new` (into `to_url`, default the same database): Optuna's study
    with all its trials (optuna.copy_study), and every trial row, epoch and evaluation of
    ours with their Optuna trial ids remapped to the copy's. Refused while the study's workers
    run; a trial left running by a dead worker is copied as failed (no worker would ever end
    it). The remains of an interrupted copy (Optuna's half, made from this very study) are
    removed and the copy made again."""
    import optuna

    url = normalise_url(url)
    target = normalise_url(to_url) if to_url else url
    ensure_schema(url, create=False)  # the source must hold the study
    with reading(url) as src:
        halves = _halves(src, name)
        if halves.ours is None:
            raise HpsearchError(f"no hpsearch study {name!r} in {mask_url(url)}")
        if halves.problem is not None:
            raise HpsearchError(halves.problem.message)
        _refuse_if_running(src, halves, "copy")
        ensure_schema(target)  # the target may be a new file: made once the source is checked
        with write_transaction(target) as dst:
            redone = _remove_interrupted_copy(dst, new, halves.ours)
            taken = _halves(dst, new)
            if taken.ours is not None or taken.optuna_id is not None:
                raise HpsearchError(f"a study called {new!r} already exists in "
                                    f"{mask_url(target)}")
        optuna.logging.set_verbosity(optuna.logging.WARNING)
        optuna.copy_study(from_study_name=name, from_storage=url, to_storage=target,
                          to_study_name=new)
        try:
            with write_transaction(target) as dst:
                copied, failed = _copy_rows(src, dst, halves.ours, new)
        except BaseException:
            with write_transaction(target) as dst:  # undo the Optuna half
                gone = _halves(dst, new)
                if gone.optuna_id is not None and gone.ours is None:
                    _delete_optuna_study(dst, gone.optuna_id)
            raise
    where = f" in {mask_url(target)}" if target != url else ""
    notes = ([f"trial{'s' if len(failed) > 1 else ''} {', '.join(map(str, failed))} left "
              "running by a dead worker, copied as failed"] if failed else []) + (
        ["the remains of an interrupted copy were removed first"] if redone else [])
    return (f"copied study {name!r} to {new!r}{where}: {copied} trials"
            + "".join(f"; {note}" for note in notes))


def _remove_interrupted_copy(dst: Connection, new: str, source: Any) -> bool:
    """Delete Optuna's half of an earlier copy of `source` as `new` that was killed before
    our rows were written: an Optuna study called `new` with no rows of ours that carries the
    source's marker (optuna.copy_study copies it), or an empty one without a marker. Someone
    else's study with trials is never touched."""
    left = _halves(dst, new)
    if left.ours is not None or left.optuna_id is None:
        return False
    marker = ot.optuna_studies(dst)[left.optuna_id].marker
    empty = marker is None and not dst.scalar(  # killed before copy_study wrote anything
        select(func.count()).select_from(ot.trials).where(ot.trials.c.study_id == left.optuna_id))
    if marker != row_marker(source.id, source.created_at) and not empty:
        return False
    _delete_optuna_study(dst, left.optuna_id)
    return True


def _copy_rows(src: Connection, dst: Connection, ours: Any, new: str
               ) -> tuple[int, list[int]]:
    """Our rows of the copy; returns the trial count and the numbers of the trials that were
    left running (by a dead worker: live ones were refused), now failed in both halves."""
    optuna_id = dst.execute(select(ot.studies.c.study_id)
                            .where(ot.studies.c.study_name == new)).scalar_one()
    failed = ot.fail_running_trials(dst, optuna_id)
    # optuna.copy_study adds the trials in number order, so numbers carry over unchanged
    trial_ids = dict(dst.execute(select(ot.trials.c.number, ot.trials.c.trial_id)
                                 .where(ot.trials.c.study_id == optuna_id)).all())
    study = _without_id(ours) | {"name": new, "optuna_study_id": optuna_id}
    study_id = dst.execute(insert(Study).values(**study).returning(Study.id)).scalar_one()
    created = dst.execute(select(Study.created_at).where(Study.id == study_id)).scalar_one()
    set_marker(dst, optuna_id, row_marker(study_id, created))  # copy_study copied the source's
    # the trials' notes (optuna-dashboard's place) are keyed by Optuna trial id: the copy's
    notes = ot.dashboard_notes(src, [ours.optuna_study_id])
    count = 0
    for trial in src.execute(select(Trial.__table__).where(Trial.study_id == ours.id)
                             .order_by(Trial.number)).all():
        if trial.number not in trial_ids:
            raise HpsearchError(f"trial {trial.number} of study {ours.name!r} has no Optuna "
                                "trial to copy; see `hpsearch db check`")
        row = _without_id(trial) | {"study_id": study_id,
                                    "optuna_trial_id": trial_ids[trial.number]}
        if (ours.optuna_study_id, trial.optuna_trial_id) in notes:
            ot.save_dashboard_note(dst, optuna_id, trial_ids[trial.number],
                                   notes[ours.optuna_study_id, trial.optuna_trial_id])
        if trial.number in failed:
            row.update(state="failed", reason=COPIED_RUNNING)
        trial_id = dst.execute(insert(Trial).values(**row).returning(Trial.id)).scalar_one()
        for model in (Epoch, Evaluation):
            children = [_without_id(r) | {"trial_id": trial_id} for r in src.execute(
                select(model.__table__).where(model.trial_id == trial.id))]
            if children:
                dst.execute(insert(model), children)
        count += 1
    # ensembles name their members by trial number, which the copy keeps
    ensembles = [_without_id(r) | {"study_id": study_id} for r in src.execute(
        select(EnsembleEvaluation.__table__).where(EnsembleEvaluation.study_id == ours.id))]
    if ensembles:
        dst.execute(insert(EnsembleEvaluation), ensembles)
    return count, failed


def _without_id(row: Any) -> dict[str, Any]:
    return {c: v for c, v in row._mapping.items() if c != "id"}


def orphans(url: str) -> list[str]:
    """One line per broken tie between our rows and Optuna's: a study of ours whose Optuna
    study is gone, renamed or re-created; an Optuna study with no rows of ours; trial rows whose
    Optuna trial is gone (or is another study's)."""
    with url_scope(url) as conn:
        return _orphans(conn)


def _orphans(conn: Connection) -> list[str]:
    optuna = ot.optuna_studies(conn)
    ours = conn.execute(select(Study.__table__)).all()
    problems = {s.id: link_problem(conn, optuna, s) for s in ours}
    lines = [p.message for p in problems.values() if p]
    # a renamed study's new Optuna study is named in its row's line (follow it, never drop it)
    linked = {s.optuna_study_id for s in ours if problems[s.id] is None}
    linked |= {i for p in problems.values() if p for i in p.successors}
    lines += [f"Optuna study {o.name!r} (id {i}) has no hpsearch rows (created by another "
              f"tool, or left by an interrupted delete); `hpsearch study delete {o.name!r} "
              "--yes` removes it" for i, o in sorted(optuna.items()) if i not in linked]
    healthy = [s.id for s in ours if problems[s.id] is None]
    if healthy:
        missing = conn.execute(
            select(Study.name, func.count(Trial.id))
            .join(Trial, Trial.study_id == Study.id)
            .outerjoin(ot.trials, (ot.trials.c.trial_id == Trial.optuna_trial_id)
                       & (ot.trials.c.study_id == Study.optuna_study_id)
                       & (ot.trials.c.number == Trial.number))
            .where(Study.id.in_(healthy), ot.trials.c.trial_id.is_(None))
            .group_by(Study.name)).all()
        lines += [f"study {n!r}: {k} trial row(s) whose Optuna trial is gone"
                  for n, k in missing]
    return lines
