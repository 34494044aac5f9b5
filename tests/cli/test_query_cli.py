"""The query commands end to end on a recorded study: every format, round trips to the
database, clear one-line errors, atomic exports, and no torch import."""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from sqlalchemy import select

from hpsearch.cli.app import app
from hpsearch.db.engine import make_engine
from hpsearch.db.models import EPOCH_METRICS, Epoch, Study, Trial
from hpsearch.params import TrialParams
from hpsearch.search.run_file import load_run_config
from hpsearch.search.study_file import StudyConfig, parse_data
from tests.helpers import hps
from tests.recorded_study import PLAN, RecordedStudy, build_recorded_study

FORMATS = ("table", "md", "csv", "json")


@pytest.fixture(scope="module")
def recorded(tmp_path_factory: pytest.TempPathFactory) -> RecordedStudy:
    url = f"sqlite:///{tmp_path_factory.mktemp('cli') / 'results.db'}"
    build_recorded_study(url, "other", seed=1)
    return build_recorded_study(url)




@pytest.fixture
def run(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
        recorded: RecordedStudy):
    def call(*args: str) -> str:
        code, out, err = hps(capsys, monkeypatch, *args, "--db", recorded.url)
        assert code == 0, err
        return out
    return call


def db_trials(recorded: RecordedStudy, name: str | None = None) -> dict[int, Trial]:
    engine = make_engine(recorded.url)
    with engine.connect() as conn:
        rows = conn.execute(select(Trial.__table__).join(Study).where(
            Study.name == (name or recorded.name))).all()
    engine.dispose()
    return {r.number: r for r in rows}


def db_epochs(recorded: RecordedStudy) -> dict[tuple[int, int], tuple[float, ...]]:
    engine = make_engine(recorded.url)
    with engine.connect() as conn:
        rows = conn.execute(select(Trial.number, Epoch.epoch,
                                   *[getattr(Epoch, m) for m in EPOCH_METRICS])
                            .join(Trial).join(Study).where(Study.name == recorded.name)).all()
    engine.dispose()
    return {(r[0], r[1]): tuple(r[2:]) for r in rows}


def sampled(trial: Trial) -> dict:
    """The params the sampler chose, from a trial row that holds every param."""
    return {k: trial.params[k] for k in trial.sampled}


def _num(text: str) -> float | int | None:
    if text == "":
        return None
    return int(text) if text.lstrip("-").isdigit() else float(text)


# --- studies, trials, best, show, compare in every format ---------------------------------

@pytest.mark.parametrize("fmt", FORMATS)
def test_studies(run, recorded: RecordedStudy, fmt: str) -> None:
    out = run("studies", "--format", fmt)
    assert recorded.name in out and "other" in out
    if fmt == "json":
        doc = {s["name"]: s for s in json.loads(out)}
        assert doc[recorded.name]["trials"] == len(PLAN)
        assert doc[recorded.name]["pruned"] == 2
        best = max(t.value for t in db_trials(recorded).values() if t.state == "complete")
        assert doc[recorded.name]["best_value"] == best
        assert doc[recorded.name]["objective"] == "val_acc:max"
    if fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert {r["name"] for r in rows} == {recorded.name, "other"}


@pytest.mark.parametrize("fmt", FORMATS)
def test_trials_leaderboard(run, recorded: RecordedStudy, fmt: str) -> None:
    out = run("trials", recorded.name, "--top", "3", "--format", fmt)
    stored = db_trials(recorded)
    ranked = sorted((t for t in stored.values() if t.value is not None),
                    key=lambda t: (-t.value, t.number))[:3]
    if fmt == "json":
        rows = json.loads(out)
        assert [r["number"] for r in rows] == [t.number for t in ranked]
        for row in rows:
            trial = stored[row["number"]]
            assert row["best_val_acc"] == trial.value
            # the sampled params, in the stored search space's order
            assert list(row["params"].items()) == [(k, trial.params[k]) for k in
                                                   ("lr", "hidden_dim", "optimizer",
                                                    "patch_size", "dropout")]
            assert row["is_best"] == (trial.number == recorded.best_number)
            assert (row["best_epoch"], row["epochs_run"], row["seconds"], row["n_params"]) == \
                (trial.best_epoch, trial.epochs_run, trial.seconds, trial.n_params)
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [int(r["number"]) for r in rows] == [t.number for t in ranked]
        for row in rows:
            trial = stored[int(row["number"])]
            assert float(row["best_val_acc"]) == trial.value
            assert float(row["params.lr"]) == trial.params["lr"]
            assert row["params.optimizer"] == trial.params["optimizer"]
    else:
        assert "best val acc" in out and "optimizer" in out
        assert f"{ranked[0].value:.4f}" in out


def test_trials_state_filter_and_sort(run, recorded: RecordedStudy) -> None:
    rows = json.loads(run("trials", recorded.name, "--state", "pruned", "--state", "failed",
                          "--sort=-lr", "--format", "json"))
    assert {r["state"] for r in rows} == {"pruned", "failed"}
    lrs = [r["params"]["lr"] for r in rows]
    assert lrs == sorted(lrs, reverse=True)


@pytest.mark.parametrize("fmt", [*FORMATS, "toml"])
def test_best(run, recorded: RecordedStudy, fmt: str) -> None:
    out = run("best", recorded.name, "--format", fmt)
    best = db_trials(recorded)[recorded.best_number]
    if fmt == "json":
        doc = json.loads(out)
        assert (doc["number"], doc["best_val_acc"], doc["params"]) == \
            (best.number, best.value, sampled(best))
        assert doc["resolved_params"] == best.params  # cosine: the full length is kept
    elif fmt == "csv":
        (row,) = csv.DictReader(io.StringIO(out))
        assert int(row["number"]) == best.number and float(row["best_val_acc"]) == best.value
        assert row["params.batch_size"] == "128"  # fixed params are included too
    elif fmt == "toml":
        assert tomllib.loads(out)["params"]["hidden_dim"] == best.params["hidden_dim"]
    else:
        assert f"{best.value:.4f}" in out and "batch_size" in out


def test_best_toml_retrains_the_same_configuration(run, recorded: RecordedStudy,
                                                   tmp_path: Path) -> None:
    path = tmp_path / "best.toml"
    path.write_text(run("best", recorded.name, "--format", "toml"))
    values, data, seeds = load_run_config(path)  # what `hpsearch train --config` reads
    best = db_trials(recorded)[recorded.best_number]
    engine = make_engine(recorded.url)
    with engine.connect() as conn:
        spec, settings = conn.execute(select(Study.spec, Study.settings)
                                      .where(Study.name == recorded.name)).one()
    engine.dispose()
    study = StudyConfig.from_stored(recorded.name, spec, settings)
    assert TrialParams.from_dict(values) == TrialParams.from_dict(best.params)
    assert values["epochs"] == study.max_epochs  # cosine schedule: keep the full length
    assert parse_data(data, "best") == study.data
    assert (seeds.seed, seeds.split_seed) == (study.seed + best.number, study.seed)


@pytest.mark.parametrize("fmt", FORMATS)
def test_show_pruned_trial(run, recorded: RecordedStudy, fmt: str) -> None:
    out = run("show", recorded.name, "1", "--format", fmt)
    trial = db_trials(recorded)[1]
    epochs = db_epochs(recorded)
    if fmt == "json":
        doc = json.loads(out)
        assert doc["trial"]["reason"] == trial.reason
        assert [tuple(e[m] for m in EPOCH_METRICS) for e in doc["epochs"]] == \
            [epochs[(1, e)] for e in (1, 2)]
    elif fmt == "csv":
        rows = list(csv.DictReader(io.StringIO(out)))
        assert [tuple(float(r[m]) for m in EPOCH_METRICS) for r in rows] == \
            [epochs[(1, e)] for e in (1, 2)]
    else:
        assert trial.reason in out
        assert "images/s" in out and "val loss" in out


def test_compare_shows_a_study_named_twice_once(run, recorded: RecordedStudy) -> None:
    rows = json.loads(run("compare", recorded.name, "other", recorded.name, "--format", "json"))
    assert [r["study"] for r in rows] == [recorded.name, "other"]


def test_show_failed_trial_without_epochs(run, recorded: RecordedStudy) -> None:
    out = run("show", recorded.name, "3")
    assert "no epoch finished" in out and "out of memory" in out


@pytest.mark.parametrize("fmt", FORMATS)
def test_compare(run, recorded: RecordedStudy, fmt: str) -> None:
    out = run("compare", recorded.name, "other", "--format", fmt)
    if fmt == "json":
        doc = {r["study"]: r for r in json.loads(out)}
        for name in (recorded.name, "other"):
            stored = db_trials(recorded, name)
            best = max((t for t in stored.values() if t.state == "complete"),
                       key=lambda t: t.value)
            first = min(t.started_at for t in stored.values())
            assert doc[name]["best_value"] == best.value
            assert doc[name]["objective"] == "val_acc:max"
            assert doc[name]["params"] == sampled(best)
            assert doc[name]["pruned_share"] == 2 / len(PLAN)
            assert doc[name]["time_to_best_s"] == (best.finished_at - first).total_seconds()
            assert doc[name]["compute_seconds"] == pytest.approx(
                sum(t.seconds or 0 for t in stored.values()))
    else:
        assert recorded.name in out and "other" in out


# --- export --------------------------------------------------------------------------------

def test_export_trials_csv_round_trips(run, recorded: RecordedStudy, tmp_path: Path) -> None:
    path = tmp_path / "trials.csv"
    assert run("export", recorded.name, "--format", "csv", "-o", str(path)) == ""
    rows = list(csv.DictReader(path.open()))
    stored = db_trials(recorded)
    assert len(rows) == len(stored)
    for row in rows:
        trial = stored[int(row["number"])]
        assert row["state"] == trial.state and row["reason"] == (trial.reason or "")
        for key, column in (("best_val_acc", "value"), ("best_epoch", "best_epoch"),
                            ("epochs_run", "epochs_run"), ("seconds", "seconds"),
                            ("n_params", "n_params")):
            assert _num(row[key]) == getattr(trial, column)
        assert {k[7:]: row[k] for k in row if k.startswith("params.")} == \
            {k: str(v) for k, v in sampled(trial).items()}


@pytest.mark.parametrize("fmt", ["csv", "json"])
def test_export_epochs_round_trips(run, recorded: RecordedStudy, fmt: str) -> None:
    out = run("export", recorded.name, "--what", "epochs", "--format", fmt)
    records = (list(csv.DictReader(io.StringIO(out))) if fmt == "csv" else json.loads(out))
    got = {(int(r["trial"]), int(r["epoch"])): tuple(float(r[m]) for m in EPOCH_METRICS)
           for r in records}
    assert got == db_epochs(recorded)


def test_export_markdown(run, recorded: RecordedStudy) -> None:
    out = run("export", recorded.name, "--format", "md")
    assert out.count("\n| ") == len(PLAN) + 1  # header and one line per trial


def test_export_to_an_unwritable_path_fails_cleanly(capsys, monkeypatch,
                                                    recorded: RecordedStudy,
                                                    tmp_path: Path) -> None:
    target = tmp_path / "missing-folder" / "trials.csv"
    code, out, err = hps(capsys, monkeypatch, "export", recorded.name, "-o", str(target),
                         "--db", recorded.url)
    assert code == 2 and err.startswith("hpsearch: error: cannot write") and err.count("\n") == 1
    assert not target.parent.exists()
    existing = tmp_path / "keep.csv"
    existing.write_text("old\n")
    os.chmod(tmp_path, 0o500)  # the folder: no new (temporary) files
    try:
        code, _, err = hps(capsys, monkeypatch, "export", recorded.name, "-o", str(existing),
                           "--db", recorded.url)
    finally:
        os.chmod(tmp_path, 0o700)
    if os.geteuid() != 0:  # root ignores permissions
        assert code == 2 and "cannot write" in err
        assert existing.read_text() == "old\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


# --- report (its rendering is tested in a browser in test_report_browser.py) -------------

def test_report_is_one_offline_file(run, recorded: RecordedStudy, tmp_path: Path) -> None:
    from plotly.offline import get_plotlyjs

    path = tmp_path / "report.html"
    assert run("report", recorded.name, "other", "-o", str(path)).startswith("wrote ")
    page = path.read_text()
    assert page.count(get_plotlyjs()) == 1  # plotly.js inlined exactly once
    ours = page.replace(get_plotlyjs(), "")
    assert "<script src" not in ours and "http" not in ours.replace("http-equiv", "")
    assert "default-src 'none'" in page  # the CSP: no connections at all
    # overlays + 9 figures per study: curves (2), best so far (2), parameters, slices,
    # importances, and parameters and importances with the pruned trials
    assert page.count('class="hps-figure"') == 2 + 2 * 9


def test_report_split_writes_one_page_per_figure(run, recorded: RecordedStudy,
                                                 tmp_path: Path) -> None:
    folder = tmp_path / "figs"
    run("report", recorded.name, "--split", "-o", str(folder))
    names = sorted(p.name for p in folder.iterdir())
    assert "index.html" in names and "plotly.min.js" in names
    pages = [n for n in names if n.endswith(".html") and n != "index.html"]
    assert len(pages) == 9
    index = (folder / "index.html").read_text()
    assert all(f'href="{page}"' in index for page in pages)


def test_report_with_one_complete_trial_explains_missing_importances(
        capsys, monkeypatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    build_recorded_study(url, "tiny", plan=(("complete", 2), ("pruned", 1)))
    page = tmp_path / "tiny.html"
    assert hps(capsys, monkeypatch, "report", "tiny", "-o", str(page), "--db", url)[0] == 0
    text = page.read_text()
    assert "parameter importances need at least 2 complete trials; this study has 1" in text


def test_importances_never_raise() -> None:
    from hpsearch.report.importance import param_importances
    from hpsearch.search.study_file import parse_study
    from tests.recorded_study import study_config

    space = parse_study(study_config("x", 6)).spec_json()["space"]
    rows = [(i, 0.1 * i, {"lr": 10.0 ** -(1 + i / 2), "optimizer": ["adam", "sgd"][i % 2],
                          "patch_size": [4, 7][i % 2], "extra": i}) for i in range(1, 6)]
    found, how = param_importances(space, rows)  # "extra" is not in the stored space
    assert found is not None and set(found) == {"lr", "optimizer", "patch_size"}
    assert how.startswith("PED-ANOVA") and how.endswith("left out: extra")
    found, how = param_importances({"odd": {"name": "garbage"}},
                                   [(i, 0.1 * i, {"odd": [i]}) for i in range(3)])
    assert found is None and how.startswith("parameter importances unavailable")


# --- errors, help, imports -----------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("trials", "nope"), ("best", "nope"), ("show", "nope", "1"), ("compare", "fmnist-demo",
                                                                  "nope"),
    ("export", "nope"), ("report", "nope"), ("show", "fmnist-demo", "99"),
])
def test_unknown_names_fail_with_one_line(capsys, monkeypatch, recorded: RecordedStudy,
                                          tmp_path: Path, args: tuple[str, ...]) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = hps(capsys, monkeypatch, *args, "--db", recorded.url)
    assert code != 0 and out == ""
    assert err.count("\n") == 1 and err.startswith("hpsearch: error: ")
    assert "'nope'" in err or "no trial 99" in err
    assert not list(tmp_path.iterdir())  # the report was not written


def test_exit_code_and_message_from_a_real_process(recorded: RecordedStudy) -> None:
    result = subprocess.run([sys.executable, "-m", "hpsearch", "best", "nope", "--db",
                             recorded.url], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and result.stdout == ""
    assert result.stderr.splitlines() == [
        f"hpsearch: error: unknown study 'nope' in {recorded.url} (known: 'fmnist-demo', "
        "'other')"]


def test_missing_database_is_not_created(capsys, monkeypatch, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'absent.db'}"
    code, _, err = hps(capsys, monkeypatch, "studies", "--db", url)
    assert code == 2 and "has no hpsearch tables" in err
    assert not (tmp_path / "absent.db").exists()


QUERY_COMMANDS = ("studies", "trials", "best", "show", "compare", "export", "report")


def test_every_option_has_help() -> None:
    import typer.main

    group = typer.main.get_command(app)
    for name in QUERY_COMMANDS:
        command = group.commands[name]  # type: ignore[attr-defined]
        assert command.help, name
        for param in command.params:
            assert getattr(param, "help", None), f"{name} {param.name}"


def test_query_commands_do_not_import_torch(recorded: RecordedStudy, tmp_path: Path) -> None:
    script = f"""
import sys
from hpsearch.cli import main
url = {recorded.url!r}
for args in (["studies"], ["trials", "fmnist-demo", "--top", "3"], ["best", "fmnist-demo"],
             ["best", "fmnist-demo", "-f", "toml"], ["show", "fmnist-demo", "1"],
             ["compare", "fmnist-demo", "other"], ["export", "fmnist-demo", "--what", "epochs"],
             ["report", "fmnist-demo", "-o", {str(tmp_path / 'r.html')!r}]):
    sys.argv = ["hpsearch", *args, "--db", url]
    try:
        main()
    except SystemExit as exc:
        assert not exc.code, (args, exc.code)
heavy = sorted(m for m in ("torch", "torchvision", "hpsearch.trainer.data",
                           "hpsearch.trainer.model", "hpsearch.trainer.loop") if m in sys.modules)
print("HEAVY", heavy)
"""
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                            timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.splitlines()[-1] == "HEAVY []"


def test_one_format_vocabulary(run, recorded: RecordedStudy) -> None:
    """Every query command writes csv, tsv, json and md alike (best adds toml, export leaves
    out the terminal table): tsv is csv's header and rows with tabs."""
    name = recorded.name
    for args in (["studies"], ["trials", name], ["best", name], ["best", name, "--pareto"],
                 ["compare", name], ["export", name]):
        csv_out = run(*args, "-f", "csv")
        tsv_out = run(*args, "-f", "tsv")
        rows = list(csv.reader(io.StringIO(csv_out)))
        assert [line.split("\t") for line in tsv_out.splitlines()] == rows, args


@pytest.mark.parametrize("command", ["studies", "trials", "best", "show", "compare", "export",
                                     "report"])
def test_help_has_examples(command: str, capsys: pytest.CaptureFixture[str],
                           monkeypatch: pytest.MonkeyPatch) -> None:
    code, out, _ = hps(capsys, monkeypatch, command, "--help")
    assert code == 0 and "Examples:" in out and f"hpsearch {command} " in out, out
