"""hpsearch: hyperparameter search for small image classifiers with Optuna and PyTorch."""

import os

# OpenMP threads that spin long while waiting collapse when the cores are shared (another
# worker, the live view, anything else): a 2-thread step took 183-204 ms instead of 31-33 ms
# with one core busy. A short spin (then sleep) keeps the idle-machine speed (32-34 ms) and
# bounds the busy case (76-78 ms); OMP_WAIT_POLICY=PASSIVE would cost 20% when idle
# (docs/BENCHMARKS.md). It must be set before torch loads; a user's own setting wins.
OPENMP_SETTINGS = {"GOMP_SPINCOUNT": "10000"}
for _name, _value in OPENMP_SETTINGS.items():
    os.environ.setdefault(_name, _value)
