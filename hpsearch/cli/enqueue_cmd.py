"""`hpsearch enqueue`: warm-start a study with known configurations."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from hpsearch.cli.app import DbOption, app


@app.command()
def enqueue(
    study: Annotated[str, typer.Argument(
        help="Study to queue the configurations in: its name, or its study file (created in "
        "the database if new, without running anything; for a stored study the file only "
        "names it: the stored search space decides).", metavar="NAME|STUDY.toml")],
    params: Annotated[Path | None, typer.Option(
        "--params", help="A configuration file in the `hpsearch best --format toml` format "
        "([params] table).", metavar="FILE.toml")] = None,
    source: Annotated[str | None, typer.Option(
        "--from", help="Queue the best complete trials of this other study (same database).",
        metavar="OTHER_STUDY")] = None,
    top: Annotated[int, typer.Option(help="With --from: how many of its best trials.",
                                     min=1, max=1000)] = 1,
    db: DbOption = None,
) -> None:
    """Queue configurations to run first, before the sampler proposes its own.

    Each configuration must fit this study: sampled parameters inside their ranges or choices,
    every other parameter equal to the value the study fixes (`epochs` is ignored: the study's
    budget decides). Nothing is queued unless all fit. Queued trials count towards n_trials and
    run when workers next ask for a trial (`hpsearch run` / `hpsearch worker`).

    Examples:

        hpsearch enqueue studies/try-small.toml --from try --top 2

        hpsearch enqueue try --params best.toml
    """
    import optuna

    from hpsearch.db.engine import database_url
    from hpsearch.errors import ConfigError
    from hpsearch.search.study_file import load_study
    from hpsearch.search.warmstart import candidates_from_file, candidates_from_study, enqueue

    if (params is None) == (source is None):
        raise ConfigError("give exactly one of --params FILE.toml or --from OTHER_STUDY")
    url = database_url(db)
    target = load_study(study) if study.endswith(".toml") else study
    name = target if isinstance(target, str) else target.name
    candidates = (candidates_from_file(params) if params is not None
                  else candidates_from_study(url, source or "", top))
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # our own lines say what happened
    for item in enqueue(url, target, candidates):
        shown = ", ".join(f"{k}={v!r}" for k, v in item.params.items())
        what = "queued" if item.new else "already in the study, not queued again"
        typer.echo(f"{name}: {what}: {shown}  ({item.candidate.source})")
