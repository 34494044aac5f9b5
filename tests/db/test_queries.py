"""hpsearch.db.queries on a small recorded study: every read against the rows written."""

from __future__ import annotations

import math
from collections.abc import Iterator

import optuna
import pytest
from sqlalchemy import Connection, event, select

from hpsearch.db import figure_queries, queries, records, summary_queries
from hpsearch.db.engine import make_engine
from hpsearch.db.models import Epoch, Trial
from hpsearch.errors import ConfigError, HpsearchError
from tests.recorded_study import MAX_EPOCHS, PLAN, RecordedStudy, build_recorded_study


@pytest.fixture(scope="module",
                params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def recorded(request: pytest.FixtureRequest,
             tmp_path_factory: pytest.TempPathFactory) -> RecordedStudy:
    """The same two recorded studies on SQLite and on PostgreSQL (window functions, JSON
    sort keys and NULLS LAST differ between them)."""
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path_factory.mktemp('queries') / 'results.db'}"
    else:
        server = request.getfixturevalue("postgres_server")
        url = server.url(server.create_database())
    build_recorded_study(url, "other", seed=1)
    return build_recorded_study(url)


@pytest.fixture
def conn(recorded: RecordedStudy) -> Iterator[Connection]:
    engine = make_engine(recorded.url)
    with engine.connect() as connection:
        yield connection
    engine.dispose()


@pytest.fixture
def study(conn: Connection, recorded: RecordedStudy) -> records.StudyInfo:
    return queries.find_study(conn, recorded.name)


def _trials(conn: Connection, study: records.StudyInfo) -> list:
    return list(conn.execute(select(Trial.__table__).where(Trial.study_id == study.id)))


def test_list_studies_counts_every_state(conn: Connection, recorded: RecordedStudy) -> None:
    summaries = {s.name: s for s in summary_queries.list_studies(conn)}
    assert set(summaries) == {"other", recorded.name}
    summary = summaries[recorded.name]
    expected = {state: sum(1 for s, _ in PLAN if s == state)
                for state in ("running", "complete", "pruned", "failed")}
    assert summary.counts == expected
    assert summary.total == len(PLAN)
    assert summary.dataset == "fashion-mnist"
    assert summary.created_at is not None and summary.created_at.tzinfo is not None
    assert summary.last_activity is not None and summary.last_activity > summary.created_at


def test_best_trial_matches_rows_and_optuna(conn: Connection, study: records.StudyInfo,
                                            recorded: RecordedStudy) -> None:
    best = queries.best_trial(conn, study)
    assert best is not None and best.number == recorded.best_number
    complete = [t for t in _trials(conn, study) if t.state == "complete"]
    assert best.value == max(t.value for t in complete)
    ostudy = optuna.load_study(study_name=recorded.name, storage=recorded.url)
    assert (ostudy.best_trial.number, ostudy.best_value) == (best.number, best.value)


def test_best_reads_one_row_through_the_value_index(recorded: RecordedStudy) -> None:
    if not recorded.url.startswith("sqlite"):
        pytest.skip("the plan check uses SQLite's EXPLAIN QUERY PLAN")
    engine = make_engine(recorded.url)
    statements: list[tuple[str, object]] = []
    event.listen(engine, "before_cursor_execute",
                 lambda _c, _cur, sql, params, _ctx, _many: statements.append((sql, params)))
    with engine.connect() as conn:
        queries.best_trial(conn, queries.find_study(conn, recorded.name))
        # the trial lookup (the trial's note is read after it, from the dashboard's attributes)
        sql, params = next((s, p) for s, p in statements if "FROM hps_trial" in s)
        assert "LIMIT" in sql
        plan = " ".join(str(r) for r in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + sql,
                                                             params))
    engine.dispose()
    assert "ix_hps_trial_study_value" in plan


def test_leaderboard_sorts_filters_and_limits(conn: Connection,
                                              study: records.StudyInfo) -> None:
    rows = _trials(conn, study)
    board = queries.leaderboard(conn, study)
    assert [t.number for t in board] == [t.number for t in sorted(
        rows, key=lambda t: (t.value is None, -(t.value or 0), t.number))]
    assert board[-1].value is None  # a trial without a value sorts last, never first
    assert [t.number for t in queries.leaderboard(conn, study, top=3)] == \
        [t.number for t in board[:3]]
    pruned = queries.leaderboard(conn, study, states=["pruned"])
    assert {t.state for t in pruned} == {"pruned"} and len(pruned) == 2
    by_lr = queries.leaderboard(conn, study, sort="lr")
    assert [t.params["lr"] for t in by_lr] == sorted(t.params["lr"] for t in rows)
    by_lr_desc = queries.leaderboard(conn, study, sort="-lr")
    assert [t.number for t in by_lr_desc] == [t.number for t in reversed(by_lr)]
    by_seconds = queries.leaderboard(conn, study, sort="seconds")
    assert by_seconds[-1].seconds is None  # the running trial
    by_optimizer = [t.params["optimizer"] for t in queries.leaderboard(conn, study,
                                                                       sort="optimizer")]
    assert by_optimizer == sorted(by_optimizer)


@pytest.mark.parametrize("bad", [{"sort": "bogus"}, {"states": ["done"]}])
def test_leaderboard_rejects_unknown_options(conn: Connection, study: records.StudyInfo,
                                             bad: dict) -> None:
    with pytest.raises(ConfigError, match="unknown"):
        queries.leaderboard(conn, study, **bad)


def test_unknown_study_and_trial_name_what_exists(conn: Connection,
                                                  study: records.StudyInfo) -> None:
    with pytest.raises(HpsearchError, match=r"unknown study 'nope' .*known: 'fmnist-demo'"):
        queries.find_study(conn, "nope")
    with pytest.raises(HpsearchError, match=r"has no trial 99 \(trials 0\.\.7\)"):
        queries.get_trial(conn, study, 99)


def test_trial_epochs_and_iterators(conn: Connection, study: records.StudyInfo) -> None:
    epochs = queries.trial_epochs(conn, study, 0)
    assert [e.epoch for e in epochs] == list(range(1, MAX_EPOCHS + 1))
    stored = conn.execute(select(Epoch.val_acc).join(Trial).where(
        Trial.study_id == study.id, Trial.number == 0).order_by(Epoch.epoch)).scalars().all()
    assert [e.val_acc for e in epochs] == stored
    assert queries.trial_epochs(conn, study, 3) == []  # failed before its first epoch
    every = list(queries.iter_epochs(conn, study))
    assert len(every) == sum(n for _, n in PLAN)
    assert [(e.trial_number, e.epoch) for e in every] == sorted(
        (e.trial_number, e.epoch) for e in every)
    assert [t.number for t in queries.iter_trials(conn, study)] == list(range(len(PLAN)))
    assert queries.sampled_names(conn, study) == ["lr", "hidden_dim", "optimizer", "patch_size",
                                               "dropout"]


def test_study_stats(conn: Connection, study: records.StudyInfo,
                     recorded: RecordedStudy) -> None:
    stats = summary_queries.study_stats(conn, study)
    rows = _trials(conn, study)
    assert stats.total == len(PLAN)
    assert math.isclose(stats.compute_seconds, sum(t.seconds or 0 for t in rows))
    assert stats.pruned_share == 2 / len(PLAN)
    assert stats.best is not None and stats.best.number == recorded.best_number
    first = min(queries.utc(t.started_at) for t in rows)
    assert stats.time_to_best_s == (stats.best.finished_at - first).total_seconds()


def _nearest_rank(values: list[float], percent: int) -> float:
    ordered = sorted(values)
    return ordered[math.ceil(percent / 100 * len(ordered)) - 1]


def test_epoch_band_is_nearest_rank_over_the_rest(conn: Connection,
                                                  study: records.StudyInfo) -> None:
    top = {c.trial_number for c in figure_queries.top_curves(conn, study, ["val_acc"], 2)}
    band = figure_queries.epoch_band(conn, study, "val_acc", skip_top=2)
    assert band is not None
    rest = [e for e in queries.iter_epochs(conn, study) if e.trial_number not in top]
    for i, epoch in enumerate(band.epochs):
        values = [e.val_acc for e in rest if e.epoch == epoch]
        assert band.n[i] == len(values)
        for p in figure_queries.QUANTILES:
            assert band.percentiles[p][i] == _nearest_rank(values, p)


def test_top_curves_are_the_best_trials(conn: Connection, study: records.StudyInfo) -> None:
    curves = figure_queries.top_curves(conn, study, ["val_acc", "val_loss"], 3)
    assert [c.trial_number for c in curves] == [
        t.number for t in queries.leaderboard(conn, study, top=3)]
    assert all(len(c.epochs) == len(c.values["val_loss"]) for c in curves)
