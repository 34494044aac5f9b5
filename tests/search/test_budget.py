"""The hours budget's plan (search/budget.py) and its limits (search/hours.py), on synthetic
epoch times and an injected clock: nothing sleeps, nothing depends on this machine's speed."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import pytest

from hpsearch.errors import ConfigError
from hpsearch.params import DataOptions, ImageCounts
from hpsearch.search.budget import (
    MARGIN_SHARE,
    RESERVED_EPOCHS,
    SETUP_S,
    Candidate,
    EpochTime,
    FinalAsk,
    StudyShape,
    Use,
    make_plan,
    progress_line,
    speeds,
)
from hpsearch.search.hours import SearchLimits, study_shape
from hpsearch.search.study_file import parse_study

# 1,000 training and 100 validation images in the search; 2,000 in the final, 500 tested
COUNTS = ImageCounts(train=1000, val=100, full=2000, test=500)
SHAPE = StudyShape(COUNTS, max_epochs=10, first_stage=(2, 0.2))


def epoch(trial: int, train_s: float, val_s: float, fraction: float | None = None) -> EpochTime:
    """An epoch that trained its images in `train_s` and validated in `val_s`."""
    images = COUNTS.train * (fraction or 1.0)
    return EpochTime(trial, train_s + val_s, images / train_s, fraction)


def test_speeds_split_an_epoch_into_training_and_validation() -> None:
    measured = speeds([epoch(0, 10.0, 1.0), epoch(0, 2.0, 1.0, fraction=0.2),
                       epoch(0, 10.0, 1.0)], COUNTS)
    assert measured[0].train_s_per_image == pytest.approx(10.0 / 1000)
    assert measured[0].eval_s_per_image == pytest.approx(1.0 / 100)
    # a trial that reached the whole split is priced from its epochs there: a fifth of the
    # data ran faster per image (it stayed in the caches), the final trains on more still
    assert measured[0].train_s_per_image == pytest.approx(
        speeds([epoch(0, 10.0, 1.0), epoch(0, 1.0, 1.0, fraction=0.2)], COUNTS)[0]
        .train_s_per_image)
    small = speeds([epoch(2, 1.0, 1.0, fraction=0.2), epoch(2, 1.5, 1.0, fraction=0.2)], COUNTS)
    assert small[2].train_s_per_image == pytest.approx(1.25 / 200)
    # the median: one slow epoch (a process's first) does not move the price
    slow_first = speeds([epoch(1, 50.0, 1.0), epoch(1, 10.0, 1.0), epoch(1, 10.0, 1.0)], COUNTS)
    assert slow_first[1].train_s_per_image == pytest.approx(10.0 / 1000)


def test_the_final_is_priced_from_the_chosen_trials_own_speed() -> None:
    # trial 0 trains 1000 images in 10 s, trial 1 in 20 s; both validate 100 images in 1 s
    epochs = [epoch(0, 10.0, 1.0), epoch(1, 20.0, 1.0)]
    final = FinalAsk(seeds=3, ensemble=1)
    plan = make_plan(1000.0, 1.0, final, SHAPE, epochs, [Candidate(1, epochs=8)])
    # 8 epochs of 2000 images at 0.02 s each, plus 500 test images at 0.01 s, three times
    one_model = 8 * 2000 * 0.02 + 500 * 0.01
    assert plan.final_s == pytest.approx(SETUP_S + 3 * one_model)
    assert plan.deadline == 1000.0 + 3600.0
    # the reserve for a running trial's epoch, at the median speed (15 s + 1 s per epoch)
    assert plan.search_end == pytest.approx(plan.deadline - plan.final_s - RESERVED_EPOCHS * 16.0
                                            - MARGIN_SHARE * 3600)
    # no trial starts after its first rung (2 epochs on 20% of the split) could no longer end
    assert plan.start_by == pytest.approx(plan.search_end - 2 * (0.2 * 1000 * 0.015 + 1.0))


def test_an_ensemble_prices_each_member_and_fills_in_unknown_ones() -> None:
    epochs = [epoch(0, 10.0, 1.0), epoch(1, 20.0, 1.0), epoch(2, 30.0, 1.0)]
    final = FinalAsk(seeds=2, ensemble=3)
    both = make_plan(0.0, 2.0, final, SHAPE, epochs, [Candidate(0, 5), Candidate(2, 10)])
    # a member not chosen yet costs the median speed (trial 1's) at the full epoch budget
    per_seed = ((5 * 2000 * 0.01 + 5.0) + (10 * 2000 * 0.03 + 5.0)
                + (10 * 2000 * 0.02 + 5.0))
    assert both.final_s == pytest.approx(SETUP_S + 2 * per_seed)


def test_before_any_epoch_the_final_has_no_price() -> None:
    plan = make_plan(50.0, 2.0, FinalAsk(), SHAPE, [], [])
    assert plan.final_s is None
    assert plan.search_end == plan.start_by == plan.deadline == 50.0 + 7200.0
    assert "not yet measured" in progress_line(plan, 60.0)


def test_the_search_goes_on_until_a_first_trial_completes() -> None:
    # the final would take longer than the hours, but without a complete trial there is no
    # final model: the search may go on to the deadline
    epochs = [epoch(0, 1000.0, 1.0)]
    waiting = make_plan(0.0, 0.5, FinalAsk(), SHAPE, epochs, [])
    assert waiting.final_s > 1800 and waiting.search_end == waiting.start_by == 1800.0
    done = make_plan(0.0, 0.5, FinalAsk(), SHAPE, epochs, [Candidate(0, 1)])
    assert done.search_end < 0  # then the search stops at once, and the final runs


def test_a_costlier_choice_moves_the_search_end_earlier() -> None:
    epochs = [epoch(0, 10.0, 1.0), epoch(1, 40.0, 1.0)]
    cheap = make_plan(0.0, 1.0, FinalAsk(seeds=2), SHAPE, epochs, [Candidate(0, 10)])
    dear = make_plan(0.0, 1.0, FinalAsk(seeds=2), SHAPE, epochs, [Candidate(1, 10)])
    assert dear.final_s - cheap.final_s == pytest.approx(2 * 10 * 2000 * (0.04 - 0.01))
    assert cheap.search_end - dear.search_end == pytest.approx(dear.final_s - cheap.final_s)


def test_a_run_that_follows_its_plan_uses_its_hours() -> None:
    """A simulated run: a worker trains trials of 10 epochs (3 s of training, 0.5 s of
    validation each) back to back and stops as the plan says; the final then takes what it
    was priced at. The hours are used within the target (90-105%)."""
    hours, started = 0.5, 0.0
    final = FinalAsk(seeds=2, ensemble=2)
    epochs: list[EpochTime] = []
    now, trial = started, 0
    plan = make_plan(started, hours, final, SHAPE, epochs, [])
    while now < plan.start_by:  # the worker's check before each trial
        for _ in range(SHAPE.max_epochs):
            now += 3.5
            epochs.append(epoch(trial, 3.0, 0.5))
            plan = make_plan(started, hours, final, SHAPE, epochs,
                             [Candidate(t, 10) for t in range(min(trial, 2))])
            if now >= plan.search_end:  # stopped at the end of its epoch
                break
        trial += 1
    search_used = now - started
    final_used = plan.final_s  # the final runs at the speed it was priced at
    use = Use(hours * 3600, plan.search_s, search_used, plan.final_s, final_used)
    assert 0.90 <= use.used_s / use.hours_s <= 1.05
    assert "left" in use.line() and f"{100 * use.used_s / use.hours_s:.1f}%" in use.line()


def test_use_says_when_the_deadline_was_passed() -> None:
    late = Use(3600.0, 3000.0, 3100.0, 500.0, 600.0)
    assert late.left_s == -100.0 and "past the deadline by 0:01:40" in late.line()
    assert "used 1:01:40 (102.8%)" in late.line()


def test_limits_keep_what_was_last_read() -> None:
    now = [100.0]
    limits = SearchLimits(clock=lambda: now[0])
    assert limits.may_start() and not limits.search_over()  # none read yet: no limits
    limits.seen({"start_by": 100.5, "search_end": 101.0})
    assert limits.may_start() and not limits.search_over()
    now[0] = 100.75
    assert not limits.may_start() and not limits.search_over()
    now[0] = 101.0
    assert not limits.may_start() and limits.search_over()
    limits.seen(None)  # the launcher cleared them
    assert limits.may_start() and not limits.search_over()


def study_doc(**budget: object) -> dict[str, object]:
    return {"study": {"name": "s"}, "data": {"dataset": "synthetic"}, "budget": budget,
            "space": {"patch_size": 7}}


def test_the_study_file_takes_hours_and_final_models() -> None:
    config = parse_study(study_doc(hours=2.5, final={"seeds": 3, "ensemble": 3}))
    assert config.hours == 2.5 and config.final == FinalAsk(seeds=3, ensemble=3)
    assert parse_study(study_doc(hours=1)).final == FinalAsk(seeds=1, ensemble=1)
    assert parse_study(study_doc()).hours is None
    for budget, message in [
            ({"hours": 0}, "hours must be positive"),
            ({"hours": -1.0}, "hours must be positive"),
            ({"hours": float("nan")}, "hours must be a finite number"),
            ({"hours": 1e9}, "hours must be at most"),
            ({"final": {"seeds": 2}}, "applies to an hours budget only"),
            ({"hours": 1, "final": {"seeds": 0}}, "seeds must be at least 1"),
            ({"hours": 1, "final": {"members": 2}}, "seeds and/or ensemble"),
            ({"hours": 1, "final": 3}, "seeds and/or ensemble")]:
        with pytest.raises(ConfigError, match=message):
            parse_study(study_doc(**budget))
    with pytest.raises(ConfigError, match="does not combine with"):
        parse_study({**study_doc(hours=1), "dry_run": {"seconds_per_epoch": 0.1}})


def test_image_counts_follow_the_split() -> None:
    assert DataOptions(val_fraction=0.1).image_counts() == ImageCounts(54_000, 6_000, 60_000,
                                                                        10_000)
    # a subset makes the search cheaper; the final still trains on the whole training set
    assert DataOptions(subset=12_000).image_counts() == ImageCounts(10_800, 1_200, 60_000,
                                                                     10_000)
    assert DataOptions(dataset="synthetic", synthetic_size=300).image_counts() == ImageCounts(
        270, 30, 300, 200)


def write_small_fashion_mnist(folder: Path, train: int, test: int) -> None:
    """The four Fashion-MNIST files, gzipped: IDX headers for `train` and `test` images (the
    image bytes are left out: only the headers are read)."""
    folder.mkdir(parents=True)
    for split, n in (("train", train), ("t10k", test)):
        for name, header in (
                (f"{split}-images-idx3-ubyte", struct.pack(">IIII", 0x0803, n, 28, 28)),
                (f"{split}-labels-idx1-ubyte", struct.pack(">II", 0x0801, n))):
            with gzip.open(folder / f"{name}.gz", "wb") as file:
                file.write(header)


def test_a_data_folder_is_priced_by_the_images_it_holds(tmp_path: Path) -> None:
    """The race's bug: a folder of 12,000 training images was priced as the 60,000 of
    Fashion-MNIST, so the final looked five times dearer than it was."""
    write_small_fashion_mnist(tmp_path / "small", train=12_000, test=2_000)
    config = parse_study({"study": {"name": "s"}, "budget": {"hours": 1},
                          "data": {"dataset": "fashion-mnist", "data_dir": str(tmp_path / "small")},
                          "space": {"patch_size": 7}})
    shape = study_shape(config)
    assert shape.counts == ImageCounts(train=10_800, val=1_200, full=12_000, test=2_000)
    # 1 ms per training image and per validation image: the final (its 10 epochs on the
    # 12,000 images, then the 2,000 tested) takes 122 s, not 610
    epochs = [EpochTime(0, 10.8 + 1.2, 1000.0)]
    plan = make_plan(0.0, 1.0, FinalAsk(), shape, epochs, [Candidate(0, epochs=10)])
    assert plan.final_s == pytest.approx(SETUP_S + 10 * 12.0 + 2.0)
