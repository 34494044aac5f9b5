"""Study and trial notes, and trial tags (`hpsearch study note`, `hpsearch tag`).

A note is written where optuna-dashboard keeps its notes (hpsearch.db.optuna_tables,
save_dashboard_note), so each side shows the other's; our rows' note column, where notes lived
before, is cleared as a note is written there and read only while the dashboard has none."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, select, update

from hpsearch.db.engine import mask_url
from hpsearch.db.lifecycle import grace_period_s, write_transaction
from hpsearch.db.models import Study, Trial, study_named
from hpsearch.db.optuna_link import check_link
from hpsearch.db.optuna_tables import dashboard_notes, live_trials, save_dashboard_note
from hpsearch.errors import ConfigError, HpsearchError


def _our_study(conn: Connection, name: str) -> Any:
    """Our row of study `name`, checked against Optuna's."""
    ours = conn.execute(select(Study.__table__).where(study_named(name))).first()
    if ours is None:
        raise HpsearchError(f"no hpsearch study {name!r} in {mask_url(str(conn.engine.url))}")
    check_link(conn, ours)
    return ours


def _check_text(what: str, text: str) -> None:
    """Notes and tags are printed to terminals and into reports: no control characters (an
    escape sequence would restyle the terminal), as in study files."""
    if not text.isprintable():
        raise ConfigError(f"{what}: control characters are not allowed (got {text[:60]!r})")


def _check_tag(tag: str) -> None:
    _check_text("tag", tag)
    if not tag.strip() or tag != tag.strip() or "," in tag:
        raise ConfigError(f"tag {tag!r}: a tag is a word or phrase without commas and without "
                          "spaces around it (tags are listed comma-separated)")


def set_study_note(url: str, name: str, text: str) -> None:
    """Set (or with an empty text, clear) the study's note."""
    _check_text("note", text)
    with write_transaction(url) as conn:
        study = _our_study(conn, name)
        save_dashboard_note(conn, study.optuna_study_id, None, text)
        conn.execute(update(Study).where(Study.id == study.id).values(note=None))


def tag_trial(url: str, name: str, number: int, *, add: tuple[str, ...] = (),
              remove: tuple[str, ...] = (), note: str | None = None
              ) -> tuple[list[str], str | None]:
    """Add and remove tags of one trial, and set its note (None: unchanged, "": cleared).
    Returns the trial's tags and note afterwards."""
    for tag in add:  # tags stored earlier can still be removed, whatever they are
        _check_tag(tag)
    if note is not None:
        _check_text("note", note)
    with write_transaction(url) as conn:
        study = _our_study(conn, name)
        trial = conn.execute(select(Trial.id, Trial.tags, Trial.note, Trial.optuna_trial_id)
                             .where(Trial.study_id == study.id, Trial.number == number)).first()
        if trial is None:
            raise HpsearchError(f"study {name!r} has no trial {number}")
        if number in live_trials(conn, study.optuna_study_id, grace_period_s(study)):
            raise HpsearchError(f"trial {number} of study {name!r} is running (a worker sent "
                                "a heartbeat within the grace period): tag it once it has "
                                "ended")
        tags = [t for t in (trial.tags or []) if t not in remove]
        tags += [t for t in dict.fromkeys(add) if t not in tags]
        column = trial.note
        if note is None:
            note = dashboard_notes(conn, [study.optuna_study_id]).get(
                (study.optuna_study_id, trial.optuna_trial_id), column)
        else:
            save_dashboard_note(conn, study.optuna_study_id, trial.optuna_trial_id, note)
            column = None
        conn.execute(update(Trial).where(Trial.id == trial.id).values(tags=tags, note=column))
    return tags, note or None
