"""Study definitions: every shipped file parses, and mistakes are clear errors."""

from __future__ import annotations

import math
import tomllib
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hpsearch.errors import ConfigError
from hpsearch.params import TrialParams
from hpsearch.search.run_file import parse_assignments
from hpsearch.search.space_file import grid_values
from hpsearch.search.study_file import Categorical, Range, parse_study

ROOT = Path(__file__).resolve().parents[2]
STUDY_FILES = sorted((ROOT / "studies").rglob("*.toml"))


def minimal(**space: object) -> dict:
    return {"study": {"name": "t"}, "space": dict(space)}


@pytest.mark.parametrize("path", STUDY_FILES, ids=lambda p: str(p.relative_to(ROOT)))
def test_shipped_studies_parse(path: Path) -> None:
    config = parse_study(tomllib.loads(path.read_text()), str(path))
    assert config.space or config.fixed
    config.base_params().check_image(config.data.dataset)


def test_space_kinds() -> None:
    config = parse_study(minimal(patch_size=[4, 7], lr={"low": 1e-4, "high": 1e-2, "log": True},
                                 num_blocks={"low": 1, "high": 4}, optimizer="adamw"))
    assert config.space["patch_size"] == Categorical((4, 7))
    assert config.space["lr"] == Range(1e-4, 1e-2, log=True, is_int=False)
    assert config.space["num_blocks"].is_int
    assert config.fixed["optimizer"] == "adamw"
    sampled = {"patch_size": 7, "lr": 0.001, "num_blocks": 2}
    assert TrialParams.from_dict(config.resolve(lambda n, _d: sampled[n])).patch_size == 7


@pytest.mark.parametrize(("doc", "message"), [
    ({"study": {"name": "t"}, "spaec": {}}, "unknown table"),
    ({"study": {"name": "t", "samplr": "tpe"}}, "unknown key"),
    ({"study": {}}, "needs a name"),
    ({"study": {"name": "a/../b"}}, "study name"),
    ({"study": {"name": "t", "sampler": "bayes"}}, "unknown sampler"),
    ({"study": {"name": "t", "pruner": "asha"}}, "unknown pruner"),
    ({"study": {"name": "t", "n_trials": 0}}, "n_trials must be at least 1"),
    ({"study": {"name": "t", "n_trials": "many"}}, "n_trials must be int"),
    ({"study": {"name": "t"}, "budget": {"max_epochs": 0}}, "max_epochs must be at least 1"),
    ({"study": {"name": "t"}, "budget": {"max_epochs": -3}}, "max_epochs must be at least 1"),
    ({"study": {"name": "t"}, "data": {"dataset": "imagenet"}}, "unknown dataset"),
    ({"study": {"name": "t"}, "data": {"val_fraction": 1.5}}, "val_fraction"),
    (minimal(lr={"low": 0.1, "high": 0.01}), "low (0.1) is greater than high"),
    (minimal(lr={"low": 0.0, "high": 0.1, "log": True}), "log range needs low > 0"),
    (minimal(lr={"low": 0.01}), "needs both low and high"),
    (minimal(lr={"low": 0.01, "high": 0.1, "base": 2}), "unknown key"),
    (minimal(patch_size=[4, 5]), "patch_size 5 does not divide"),
    (minimal(patch_size=3), "patch_size 3 does not divide"),
    (minimal(patch_size={"low": 2, "high": 7}), "give a list"),
    (minimal(optimizer=["adam", "lion"]), "unknown optimizer 'lion'"),
    (minimal(init="orthogonal"), "unknown init"),
    (minimal(activation=["gelu", "swish"]), "unknown activation"),
    (minimal(scheduler="onecycle"), "unknown scheduler"),
    (minimal(hidden_dim="wide"), "hidden_dim must be int"),
    (minimal(hidden_dim=[]), "empty list"),
    (minimal(batch_size=[64, 64]), "repeated choices"),
    (minimal(dropout={"low": 0.0, "high": 1.5}), "dropout must be in [0, 1)"),
    (minimal(depth=3), "unknown key(s) in [space]: depth"),
    (minimal(epochs=5), "max_epochs"),
    (minimal(optimizer={"low": 1, "high": 2}), "give a list of choices"),
    ({"study": {"name": "t"}, "workers": {"grace_period": 5, "heartbeat_interval": 10}},
     "grace_period must exceed"),
    ({"study": {"name": "t", "sampler": "grid"}, "space": {"lr": {"low": 0.1, "high": 0.2}}},
     "grid sampler"),
    ({"study": {"name": "t", "pruner": "median"}, "pruner": {"reduction_factor": 3}},
     "reduction_factor does not apply to pruner 'median' (it takes: objective, "
     "startup_trials)"),
    ({"study": {"name": "t", "pruner": "none"}, "pruner": {"startup_trials": 3}},
     "startup_trials does not apply to pruner 'none' (it takes: objective)"),
    ({"study": {"name": "t", "metric": "val_loss"}, "pruner": {"objective": "val_acc"}},
     "[pruner] objective 'val_acc' is not one of the study's objectives measured every epoch "
     "(choose from: val_loss)"),
    ({"study": {"name": "t", "pruner": "hyperband"}, "pruner": {"reduction_factor": 1}},
     "reduction_factor must be at least 2"),
    ({"study": {"name": "t", "pruner": "median"}, "pruner": {"startup_trials": -1}},
     "startup_trials must be at least 0"),
    ({"study": {"name": "t", "pruner": "median"}, "pruner": {"startup_trials": 2.5}},
     "startup_trials must be int"),
    ({"study": {"name": "t"}, "pruner": 3}, "[pruner] must be a table"),
])
def test_bad_definitions_are_clear_errors(doc: dict, message: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_study(doc, "x.toml")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_grid_expands_stepped_ranges() -> None:
    config = parse_study({"study": {"name": "g", "sampler": "grid"},
                          "space": {"num_blocks": {"low": 1, "high": 3, "step": 1},
                                    "optimizer": ["adam", "sgd"]}})
    assert grid_values(config) == {"num_blocks": [1, 2, 3], "optimizer": ["adam", "sgd"]}


def test_assignments_parse_toml_scalars() -> None:
    assert parse_assignments(["lr=3e-3", "optimizer=adamw", "augment=true", "num_blocks=2"]) == {
        "lr": 3e-3, "optimizer": "adamw", "augment": True, "num_blocks": 2}
    with pytest.raises(ConfigError):
        parse_assignments(["lr"])


finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False)


@given(low=finite, high=finite, log=st.booleans())
def test_float_ranges_accepted_exactly_when_valid(low: float, high: float, log: bool) -> None:
    """Property: a weight_decay range parses iff low <= high, low >= 0, and (not log or low>0);
    a parsed range keeps its bounds."""
    doc = minimal(weight_decay={"low": low, "high": high, "log": log})
    valid = low <= high and low >= 0 and (not log or low > 0)
    if valid:
        dim = parse_study(doc).space["weight_decay"]
        assert (dim.low, dim.high, dim.log) == (low, high, log)
    else:
        with pytest.raises(ConfigError):
            parse_study(doc)


@given(choices=st.lists(st.integers(min_value=-5, max_value=40), min_size=1, max_size=6))
def test_patch_choices_accepted_iff_all_divide(choices: list[int]) -> None:
    """Property: patch_size choices parse iff unique and all positive divisors of 28."""
    doc = minimal(patch_size=choices)
    valid = len(set(choices)) == len(choices) and all(c >= 1 and 28 % c == 0 for c in choices)
    if valid:
        assert parse_study(doc).space["patch_size"].choices == tuple(choices)
    else:
        with pytest.raises(ConfigError):
            parse_study(doc)


@given(value=st.one_of(st.text(max_size=5), st.booleans(), st.none().map(lambda _: 1.5),
                       st.floats(allow_nan=True)))
def test_int_params_reject_non_integers(value: object) -> None:
    """Property: hidden_dim accepts a value iff it is an integer >= 1 (int, integral float, or
    a string of one), never anything else, and never raises anything but ConfigError."""
    try:
        config = parse_study(minimal(hidden_dim=value))
    except ConfigError:
        return
    assert isinstance(config.fixed["hidden_dim"], int) and config.fixed["hidden_dim"] >= 1
    assert not isinstance(value, bool)
    assert not (isinstance(value, float) and not (math.isfinite(value) and value.is_integer()))


def test_scheduler_and_optimiser_options_are_searchable_and_fixable() -> None:
    config = parse_study(minimal(
        optimizer=["sgd", "adam"], momentum={"low": 0.5, "high": 0.95}, nesterov=[True, False],
        beta2=[0.98, 0.999], eps=1e-7, scheduler="plateau", plateau_metric="val_acc",
        plateau_patience={"low": 0, "high": 10}, plateau_threshold={"low": 1e-5, "high": 1e-2,
                                                                    "log": True},
        min_lr=1e-5))
    assert config.space["nesterov"] == Categorical((True, False))
    assert config.space["plateau_patience"] == Range(0, 10, is_int=True)
    assert config.fixed["plateau_metric"] == "val_acc" and config.fixed["eps"] == 1e-7
    sampled = {"optimizer": "sgd", "momentum": 0.9, "nesterov": True, "beta2": 0.98,
               "plateau_patience": 3, "plateau_threshold": 1e-3}
    params = TrialParams.from_dict(config.resolve(lambda n, _d: sampled[n]))
    assert (params.nesterov, params.plateau_patience, params.plateau_direction) == (True, 3, "max")


@pytest.mark.parametrize(("space", "fragment"), [
    ({"gamma": {"low": 0.1, "high": 1.0}}, "space.gamma: gamma must be in (0, 1), got 1.0"),
    ({"plateau_patience": -1}, "space.plateau_patience: plateau_patience must not be negative"),
    ({"beta1": [0.9, 1.0]}, "space.beta1: beta1 must be in [0, 1), got 1.0"),
    ({"optimizer": "sgd", "nesterov": True}, "nesterov needs momentum > 0"),
    ({"scheduler": "plateau", "plateau_mode": "max"},
     "plateau_mode 'max' contradicts plateau_metric 'val_loss'"),
])
def test_bad_scheduler_and_optimiser_options_in_a_study(space: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_study(minimal(**space), "s.toml")
    assert str(info.value).startswith("s.toml: ") and fragment in str(info.value)


def test_a_study_file_saved_with_a_byte_order_mark_reads_as_without(tmp_path: Path) -> None:
    """Windows Notepad starts UTF-8 files with a BOM, which tomllib calls an invalid
    statement."""
    from hpsearch.search.study_file import load_study

    text = STUDY_FILES[0].read_text()
    plain, marked = tmp_path / "plain.toml", tmp_path / "marked.toml"
    plain.write_text(text)
    marked.write_bytes(b"\xef\xbb\xbf" + text.encode())
    assert load_study(marked) == load_study(plain)


@pytest.mark.parametrize(("space", "fragment"), [
    # each value is valid alone; together they make a trial that stopped its worker at once
    ({"optimizer": "sgd", "nesterov": [True, False], "momentum": [0.0, 0.9]},
     "a trial with optimizer = 'sgd', nesterov = True, momentum = 0.0: nesterov needs"),
    ({"optimizer": ["adam", "sgd"], "nesterov": True}, "nesterov needs momentum > 0"),
    ({"optimizer": "sgd", "nesterov": [False, True], "momentum": {"low": 0.0, "high": 0.9}},
     "nesterov needs momentum > 0"),
    ({"scheduler": ["none", "plateau"], "plateau_mode": ["min", "max"]},
     "plateau_mode 'max' contradicts plateau_metric 'val_loss'"),
    ({"scheduler": "plateau", "plateau_mode": "min", "plateau_metric": ["val_loss", "val_acc"]},
     "plateau_mode 'min' contradicts plateau_metric 'val_acc'"),
    ({"model": ["mlp", "mixer"], "patch_size": [7, 5]}, "patch_size 5 does not divide"),
])
def test_a_combination_the_space_holds_that_makes_no_valid_trial_is_refused(
        space: dict, fragment: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_study(minimal(**space), "s.toml")
    assert str(info.value).startswith("s.toml: ") and fragment in str(info.value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("space", [
    # momentum is searched above 0: every SGD trial has some (was refused: the check used
    # momentum's default, 0, for a searched momentum)
    {"optimizer": "sgd", "nesterov": True, "momentum": {"low": 0.5, "high": 0.9}},
    {"optimizer": ["sgd", "adam"], "nesterov": True, "momentum": [0.5, 0.9]},
    {"scheduler": "plateau", "plateau_mode": "max", "plateau_metric": {"choices": ["val_acc"]}},
    # Nesterov only where momentum is not 0: the way out that `when` gives
    {"optimizer": "sgd", "momentum": [0.0, 0.9],
     "nesterov": {"choices": [True, False], "when": {"momentum": 0.9}}},
    # patch_size acts only in a Mixer, and no trial builds one
    {"model": ["mlp", "nets:small_cnn"], "patch_size": 5},
])
def test_every_combination_the_space_holds_is_valid_so_it_is_accepted(space: dict) -> None:
    config = parse_study(minimal(**space), "s.toml")
    assert set(config.space) | set(config.fixed) >= set(space)
