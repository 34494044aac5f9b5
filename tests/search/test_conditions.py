"""Conditional search spaces: a parameter is sampled and recorded only where it acts (momentum
under SGD, gamma under step or plateau, what a study file's `when` says), readers honour that,
and a study file that asks for the impossible is refused with one line."""

from __future__ import annotations

import tomllib
from pathlib import Path

import optuna
import pytest

from hpsearch.db import figure_queries, queries
from hpsearch.db.engine import make_engine
from hpsearch.errors import ConfigError
from hpsearch.report.figures import parallel_coordinates, slice_plots
from hpsearch.report.importance import param_importances
from hpsearch.search.space import make_sampler, suggest
from hpsearch.search.study import prepare_study
from hpsearch.search.study_file import load_study, parse_study
from hpsearch.search.warmstart import Candidate, fit_to_space
from hpsearch.search.worker import run_worker
from tests.helpers import hps
from tests.study_files import write_tiny_study

CONDITIONAL = """optimizer = ["sgd", "adam"]
momentum = { low = 0.5, high = 0.95 }
scheduler = ["none", "step"]
gamma = { low = 0.1, high = 0.9 }
dropout = { low = 0.0, high = 0.3, when = { optimizer = "sgd" } }
"""


def study(**space: object) -> dict:
    return {"study": {"name": "c", "sampler": "tpe"}, "space": space}


def test_the_sampler_never_sees_an_inactive_parameter() -> None:
    config = parse_study(study(optimizer=["sgd", "adam"], momentum={"low": 0.5, "high": 0.95},
                               scheduler=["none", "step", "plateau"],
                               gamma={"low": 0.1, "high": 0.9}, lr={"low": 1e-4, "high": 0.1}))
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    sampler = make_sampler(config)
    assert sampler._group and sampler._multivariate  # grouped multivariate TPE
    ostudy = optuna.create_study(sampler=sampler)
    for _ in range(30):  # past TPE's start-up trials: the model samples too
        trial = ostudy.ask()
        applied, sampled = suggest(trial, config)
        asked = trial.params  # everything the sampler was asked for, as Optuna records it
        assert ("momentum" in asked) == (asked["optimizer"] == "sgd") == ("momentum" in applied)
        assert ("gamma" in asked) == (asked["scheduler"] != "none") == ("gamma" in applied)
        assert set(sampled) == set(asked)
        assert ("beta1" in applied) == (asked["optimizer"] == "adam")  # defaults act there
        ostudy.tell(trial, applied.get("momentum", 0.2) + applied["lr"])


def test_rows_readers_and_importances_hold_only_what_acted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str],
        monkeypatch: pytest.MonkeyPatch) -> None:
    url = f"sqlite:///{tmp_path / 'c.db'}"
    path = write_tiny_study(tmp_path, "cond", n_trials=12, epochs=2, dry_run=0.0,
                            extra_space=CONDITIONAL)
    config = load_study(path)
    prepare_study(config, url)
    run_worker("cond", url, device="cpu")
    engine = make_engine(url)
    with engine.connect() as conn:
        info = queries.find_study(conn, "cond")
        trials = queries.leaderboard(conn, info, top=100, states=("complete",))
        rows = figure_queries.complete_params(conn, info)
    engine.dispose()
    assert {t.params["optimizer"] for t in trials} == {"sgd", "adam"}
    for trial in trials:
        sgd = trial.params["optimizer"] == "sgd"
        assert ("momentum" in trial.params) == sgd == ("momentum" in trial.sampled)
        assert ("dropout" in trial.params) == sgd  # the file's own condition
        assert ("beta1" in trial.params) != sgd
        assert ("gamma" in trial.params) == (trial.params["scheduler"] == "step")
        assert "hflip" not in trial.params  # no augmentation, nothing of it recorded
    # the importances' input: each trial with the sampled values that acted in it, so that
    # momentum is weighed over the SGD trials only; nothing else is listed
    for _, _, params in rows:
        assert ("momentum" in params) == (params["optimizer"] == "sgd")
    found, _how = param_importances(info.space, rows)
    assert found is not None and set(found) == {"optimizer", "momentum", "scheduler", "gamma",
                                                "dropout", "patch_size", "hidden_dim", "lr"}

    axes = [d.label for d in parallel_coordinates("cond", rows, list(info.space), info.space)
            .data[0].dimensions]  # lines through every axis: what acted in every trial
    assert sorted(axes) == ["best val acc", "hidden_dim", "lr (log10)", "optimizer",
                            "patch_size", "scheduler"]
    slices = {t.name: len(t.x) for t in slice_plots("cond", rows, list(info.space),
                                                     info.space).data}
    assert slices["momentum"] == sum(p["optimizer"] == "sgd" for _, _, p in rows)

    code, out, err = hps(capsys, monkeypatch, "best", "cond", "--format", "toml", "--db", url)
    assert code == 0, err
    params = tomllib.loads(out)["params"]
    assert ("momentum" in params) == (params["optimizer"] == "sgd")
    assert ("beta2" in params) == (params["optimizer"] == "adam")


def test_warm_starts_are_checked_against_the_conditions() -> None:
    config = parse_study(study(optimizer=["sgd", "adam"], momentum={"low": 0.5, "high": 0.95}))
    assert fit_to_space(Candidate({"optimizer": "sgd", "momentum": 0.9}, "file"),
                        config) == {"optimizer": "sgd", "momentum": 0.9}
    # a flat record of an Adam trial (every option written out) fits: momentum did nothing
    with pytest.raises(ConfigError, match=r"momentum=0\.9 \(does not act here: it needs "
                                          r"optimizer in \['sgd'\]\)"):
        fit_to_space(Candidate({"optimizer": "adam", "momentum": 0.9}, "file"), config)
    assert fit_to_space(Candidate({"optimizer": "adam", "beta1": 0.9}, "file"),
                        config) == {"optimizer": "adam"}


@pytest.mark.parametrize(("space", "message"), [
    ({"momentum": {"low": 0.5, "high": 0.9}},
     "space.momentum never acts: it acts only when optimizer is 'sgd', and optimizer is "
     "'adam' by default"),
    ({"optimizer": "adamw", "momentum": {"low": 0.5, "high": 0.9}},
     "optimizer is fixed at 'adamw'"),
    ({"optimizer": ["adam", "radam"], "nesterov": [True, False]},
     "optimizer is searched over ['adam', 'radam']"),
    ({"lr": {"low": 0.1, "high": 0.5, "when": {"dropout": 0.1}}},
     "space.lr never acts: it acts only when dropout is 0.1, and dropout is 0.0 by default"),
    ({"dropout": {"low": 0.1, "high": 0.5}, "lr": {"low": 0.1, "high": 0.5,
                                                   "when": {"dropout": 0.1}}},
     "space.lr.when: dropout is a range"),
    ({"lr": {"low": 0.1, "high": 0.5, "when": {"colour": "red"}}},
     "'colour' is not another parameter"),
    ({"optimizer": {"choices": ["sgd", "adam"], "when": {"scheduler": "step"}},
      "scheduler": {"choices": ["none", "step"], "when": {"optimizer": "sgd"}}},
     "its conditions lead back to it"),
    ({"optimizer": {"choices": ["sgd", "adam"], "step": 2}}, "a table with choices takes when"),
    # a typo beside a valid value was passed over: the condition held for 'sgd' alone
    ({"optimizer": ["sgd", "adam"],
      "label_smoothing": {"low": 0.0, "high": 0.2, "when": {"optimizer": ["sgd", "sdg"]}}},
     "space.label_smoothing.when: optimizer is never 'sdg': it is searched over ['sgd', 'adam']"),
    ({"num_blocks": [1, 2], "lr": {"low": 0.1, "high": 0.5, "when": {"num_blocks": [2, 4]}}},
     "space.lr.when: num_blocks is never 4"),
])
def test_impossible_conditions_are_one_line(space: dict, message: str) -> None:
    with pytest.raises(ConfigError, match="never acts|when|not another|lead back|choices") as exc:
        parse_study(study(**space))
    assert message in str(exc.value) and "\n" not in str(exc.value)
