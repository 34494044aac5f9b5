"""hpsearch: hyperparameter search for small image classifiers with Optuna and PyTorch."""

import os

# OpenMP threads that spin while waiting collapse when the cores are shared (another worker,
# the live view, anything else): measured here 335 vs 4,197 img/s for the same 2-thread run on
# a loaded 2-core machine. Passive waiting avoids that; it must be set before torch loads.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
