"""The trainer: data, model, the epoch loop (a generator of EpochMetrics), checkpoints and
runtime settings. Pure torch: never imports optuna, sqlalchemy, db/ or search/."""
