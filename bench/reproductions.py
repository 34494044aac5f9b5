"""Reproductions benchmark: run studies/reproductions/*.toml as a user would and record them.

For each study (all of them, shortest first, or those named on the command line or within
--max-epochs), through the real CLI, each into its own SQLite file under OUT:
    hpsearch run FILE --db sqlite:///OUT/<stem>.db
    hpsearch evaluate repro-<stem> --db sqlite:///OUT/<stem>.db --seeds 1
then OUT/<stem>.json records the commit it ran on. A study with that file is finished and is
skipped on the next invocation; an interrupted one continues (`run` resumes the study, `evaluate`
reuses a stored result). The table (study, what it reproduces, validation peak and its epoch,
test accuracy, minutes of training, commit) replaces what lies between the marker comments in
docs/BENCHMARKS.md; studies not run yet are listed as "not run".

    python bench/reproductions.py --max-epochs 20          # the three of 10-20 epochs
    python bench/reproductions.py mixer-relu-adam-wd-30ep  # one more, by file name
    python bench/reproductions.py                          # all twelve: many hours on 2 cores
    python bench/reproductions.py --table-only             # rewrite the table, run nothing

Smoke run, to test this script only (it is NOT a reproduction): --subset N, --epochs N and
--dataset NAME train changed copies of the files (studies named repro-<stem>-smoke) in a fresh
temporary folder unless --out is given, and write the table, titled as a smoke run, to
OUT/BENCHMARKS-smoke.md unless --doc is given. `evaluate` retrains on the whole training set
(it ignores [data] subset), so keep --epochs small.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
import tomllib
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import select

from hpsearch import api
from hpsearch.db.engine import make_engine
from hpsearch.db.models import Evaluation, Study, Trial
from hpsearch.files import atomic_write
from hpsearch.report.tables import toml_value

ROOT = Path(__file__).resolve().parents[1]
FOLDER = ROOT / "studies" / "reproductions"
RESULTS = ROOT / "bench" / "results" / "reproductions"
DOC = ROOT / "docs" / "BENCHMARKS.md"
BEGIN, END = "<!-- reproductions:begin -->", "<!-- reproductions:end -->"


@dataclass(frozen=True)
class Reproduction:
    path: Path  # the study file to run (a changed copy in a smoke run)
    stem: str
    name: str
    epochs: int
    what: str  # "Reproduces ..." from the file's header, first sentence

    def db_url(self, out: Path) -> str:
        return f"sqlite:///{out / (self.stem + '.db')}"


def read_reproduction(path: Path) -> Reproduction:
    text = path.read_text()
    doc = tomllib.loads(text)
    header = " ".join(line.lstrip("# ").strip() for line in text.split("[study]")[0].splitlines())
    match = re.match(r"Reproduces (?:the coursework's )?(.*?\.)(?: |$)", header)
    what = match.group(1) if match else path.stem
    return Reproduction(path, path.stem, doc["study"]["name"], int(doc["budget"]["max_epochs"]),
                        what)


def select_reproductions(names: list[str], max_epochs: int | None) -> list[Reproduction]:
    """The named files (stem or study name), or all within max_epochs; shortest first."""
    everything = [read_reproduction(p) for p in sorted(FOLDER.glob("*.toml"))]
    known = {r.stem: r for r in everything} | {r.name: r for r in everything}
    unknown = [n for n in names if n not in known]
    if unknown:
        sys.exit(f"unknown reproduction(s): {', '.join(unknown)} (known: "
                 f"{', '.join(r.stem for r in everything)})")
    chosen = [known[n] for n in dict.fromkeys(names)] if names else everything
    if max_epochs is not None:
        chosen = [r for r in chosen if r.epochs <= max_epochs]
    return sorted(chosen, key=lambda r: (r.epochs, r.stem))


def smoke_copy(repro: Reproduction, folder: Path, *, subset: int | None, epochs: int | None,
               dataset: str | None) -> Reproduction:
    """A changed copy of the study file for a smoke run, under a name of its own."""
    doc = tomllib.loads(repro.path.read_text())
    doc["study"]["name"] = f"{repro.name}-smoke"
    if subset is not None:
        doc["data"]["subset"] = subset
    if dataset is not None:
        doc["data"]["dataset"] = dataset
    if epochs is not None:
        doc["budget"]["max_epochs"] = epochs
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / repro.path.name
    lines = [f"# SMOKE RUN copy of studies/reproductions/{repro.path.name}: not a reproduction"]
    for table, values in doc.items():
        lines += ["", f"[{table}]", *(f"{k} = {toml_value(v)}" for k, v in values.items())]
    path.write_text("\n".join(lines) + "\n")
    return Reproduction(path, repro.stem, doc["study"]["name"],
                        int(doc["budget"]["max_epochs"]), repro.what)


def commit() -> str:
    """The checked-out commit, with "+changes" when tracked files differ from it."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True,
                              check=False).stdout.strip()

    head = git("rev-parse", "--short", "HEAD") or "unknown"
    return head + ("+changes" if git("status", "--porcelain", "--untracked-files=no") else "")


def hpsearch(*args: str, cwd: Path) -> None:
    print("$ hpsearch " + " ".join(args), flush=True)
    # this checkout's hpsearch, whatever the folder it runs in (the commit recorded is its own)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)}
    proc = subprocess.run([sys.executable, "-m", "hpsearch", *args], cwd=cwd, env=env,
                          check=False)
    if proc.returncode != 0:
        sys.exit(f"hpsearch {args[0]} failed (exit {proc.returncode}); rerun to continue")


def run_one(repro: Reproduction, out: Path, common: list[str]) -> None:
    marker = out / f"{repro.stem}.json"
    if marker.exists():
        print(f"{repro.stem}: finished earlier ({marker}), skipped")
        return
    started = time.monotonic()
    url = repro.db_url(out)
    hpsearch("run", str(repro.path), "--db", url, "--log-dir", str(out / "hpsearch-logs"),
             "--top", "0", *common, cwd=out)
    hpsearch("evaluate", repro.name, "--db", url, "--seeds", "1", *common, cwd=out)
    with atomic_write(marker) as f:
        json.dump({"study": repro.name, "commit": commit(),
                   "finished_at": datetime.now(UTC).isoformat(timespec="seconds"),
                   "this_invocation_minutes": (time.monotonic() - started) / 60,
                   **asdict(measured(repro, url))}, f)
        f.write("\n")


@dataclass(frozen=True)
class Row:
    val_peak: float
    peak_epoch: int
    test_acc: float
    eval_epochs: int
    minutes: float  # the trial's training plus the final retraining and test pass


def measured(repro: Reproduction, url: str) -> Row:
    """A finished study's row, read from its database (kept in its marker file: the
    databases are not committed, the table is rebuilt from the markers)."""
    best = api.best_trial(repro.name, url)
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            evaluation = conn.execute(
                select(Evaluation.test_acc, Evaluation.epochs, Evaluation.seconds)
                .join(Trial, Trial.id == Evaluation.trial_id).join(Study)
                .where(Study.name == repro.name).order_by(Evaluation.id.desc())).first()
    finally:
        engine.dispose()
    if best is None or best.value is None or evaluation is None:
        sys.exit(f"{repro.stem}: no best trial or no evaluation in {url}")
    return Row(best.value, best.best_epoch or 0, evaluation.test_acc, evaluation.epochs,
               ((best.seconds or 0.0) + evaluation.seconds) / 60)


def table(repros: list[Reproduction], out: Path, smoke_note: str | None) -> str:
    if smoke_note:
        title = (f"**SMOKE RUN ({smoke_note}): a test of bench/reproductions.py, NOT a "
                 "reproduction.**")
    else:
        title = ("Each study run as shipped (`hpsearch run`, then `hpsearch evaluate --seeds 1`: "
                 "retrained on train + validation for the epochs at the validation peak, test set "
                 "scored once); minutes = the trial's training + the retraining and test pass.")
    lines = [title, "", "| study | reproduces | val peak (epoch) | test acc (epochs) | minutes "
             "| commit |", "|---|---|---|---|---|---|"]
    for repro in repros:
        marker = out / f"{repro.stem}.json"
        if not marker.exists():
            lines.append(f"| {repro.stem} | {repro.what} | not run | – | – | – |")
            continue
        row = json.loads(marker.read_text())
        if "val_peak" not in row:  # a marker written before the row was kept in it
            row |= asdict(measured(repro, repro.db_url(out)))
        lines.append(f"| {repro.stem} | {repro.what} | {row['val_peak']:.2%} "
                     f"({row['peak_epoch']}) | **{row['test_acc']:.2%}** ({row['eval_epochs']}) "
                     f"| {row['minutes']:.1f} | {row['commit']} |")
    return "\n".join(lines)


def write_table(doc: Path, text: str) -> None:
    """Replace the text between the markers (or append a section with them)."""
    old = doc.read_text() if doc.exists() else ""
    block = f"{BEGIN}\n{text}\n{END}"
    if BEGIN in old and END in old:
        new = old[:old.index(BEGIN)] + block + old[old.index(END) + len(END):]
    else:
        new = (old.rstrip("\n") + "\n\n" if old else "") + (
            "## Reproductions (bench/reproductions.py)\n\n" + block + "\n")
    with atomic_write(doc) as f:
        f.write(new)
    print(f"wrote the table to {doc}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("studies", nargs="*", metavar="STUDY",
                        help="file stems or study names (default: all)")
    parser.add_argument("--max-epochs", type=int,
                        help="only the studies of at most this many epochs")
    parser.add_argument("--out", type=Path,
                        help=f"folder for the databases (default: {RESULTS.relative_to(ROOT)}; "
                        "a smoke run: a new temporary folder)")
    parser.add_argument("--doc", type=Path,
                        help="Markdown file for the table (default: docs/BENCHMARKS.md; a smoke "
                        "run: OUT/BENCHMARKS-smoke.md)")
    parser.add_argument("--table-only", action="store_true",
                        help="run nothing; rewrite the table from what OUT holds")
    parser.add_argument("--threads", type=int, help="CPU threads (default: every core)")
    parser.add_argument("--device", default="auto", help="auto, cpu or cuda")
    smoke = parser.add_argument_group("smoke run (tests the script; NOT a reproduction)")
    smoke.add_argument("--subset", type=int, help="train on this many images")
    smoke.add_argument("--epochs", type=int, help="epochs per study")
    smoke.add_argument("--dataset", help="e.g. synthetic")
    args = parser.parse_args(argv)

    repros = select_reproductions(args.studies, args.max_epochs)
    overrides = {"subset": args.subset, "epochs": args.epochs, "dataset": args.dataset}
    smoke_note = ", ".join(f"{k} {v}" for k, v in overrides.items() if v is not None) or None
    out = args.out or (Path(tempfile.mkdtemp(prefix="hps-repro-smoke-")) if smoke_note
                       else RESULTS)
    out = out.resolve()
    out.mkdir(parents=True, exist_ok=True)
    doc = args.doc or (out / "BENCHMARKS-smoke.md" if smoke_note else DOC)
    if smoke_note:
        repros = [smoke_copy(r, out / "studies", **overrides) for r in repros]
        print(f"SMOKE RUN ({smoke_note}) in {out}: not a reproduction")
    common = ["--device", args.device] + (["--threads", str(args.threads)] if args.threads
                                          else [])
    for repro in [] if args.table_only else repros:
        run_one(repro, out, common)
    # the table lists every reproduction (finished earlier or now), not only this selection
    shown = repros if smoke_note else select_reproductions([], None)
    write_table(doc, table(shown, out, smoke_note))


if __name__ == "__main__":
    main()
