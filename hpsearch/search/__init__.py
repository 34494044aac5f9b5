"""The search: study files, the space, the Optuna study, the objective, workers, the launcher
and live progress. The only place that knows Optuna's trial API."""
