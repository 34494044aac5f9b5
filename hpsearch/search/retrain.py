"""What retrains a trial on its own: the parameters that acted in it and the epochs to train.

The one home of these rules, for `best --format toml` and `evaluate`.
"""

from __future__ import annotations

from typing import Any

from hpsearch.db.records import StudyInfo, TrialRecord
from hpsearch.errors import ConfigError
from hpsearch.params import DataOptions, TrialParams


def retrain_config(study: StudyInfo, trial: TrialRecord) -> tuple[dict[str, Any], DataOptions]:
    """The trial's params (those that acted in it, as its row holds them) and the study's data,
    which retrain `trial` on its own.

    epochs becomes the epoch where the trial peaked, except with a cosine schedule: that one
    stretches over all epochs, so a shorter run would follow a different learning-rate curve.
    """
    try:
        checked = TrialParams.from_dict(trial.params)  # checks the stored row
    except ConfigError as exc:
        raise ConfigError(f"cannot resolve the params of trial {trial.number} of study "
                          f"{study.name!r}: {exc}") from None
    params = {k: v for k, v in checked.to_dict().items() if k in trial.params}
    if trial.best_epoch is not None and checked.scheduler != "cosine":
        params["epochs"] = trial.best_epoch
    return params, study.data
