"""The import rules of docs/ARCHITECTURE.md, checked against the code.

1. Torch-free modules stay torch-free: imported in a fresh interpreter, none of them loads
   torch (~2.7 s): the query commands, `hpsearch --help` and the launcher start at once.
2. The layers never reach across: read from every module's source (imports at module level and
   inside functions alike), the trainer never imports optuna, sqlalchemy, db/, search/,
   report/ or cli/; db/ and report/ never import torch, trainer/ or search/; the kernel imports
   only the standard library and itself.
3. Migrations are frozen history: no revision under alembic/versions imports hpsearch (a
   later change to the package must not change what an old revision does).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hpsearch"
# the search modules that drive the trainer in-process; every other search module (the worker
# and objective too: a dry-run worker never loads torch) must stay torch-free
TRAINING = {"hpsearch.search.evaluate", "hpsearch.search.ensemble"}
KERNEL = {"params", "metrics", "objectives", "errors", "paths", "files", "cores", "stop",
          "spec", "masking", "limits"}
MIGRATIONS = PACKAGE.parent / "alembic" / "versions"


def modules(part: str) -> list[str]:
    folder = PACKAGE / part
    return sorted(f"hpsearch.{part}.{p.stem}" for p in folder.glob("*.py")
                  if p.stem != "__init__")


def torch_free_modules() -> list[str]:
    # leaves first, so that the module blamed is the one that imports torch itself
    names = [f"hpsearch.{name}" for name in sorted(KERNEL)]
    # the launcher finds and counts the data files
    names += ["hpsearch.trainer.data_files", "hpsearch.trainer.data_sources"]
    names += ["hpsearch.trainer.machine"]  # `hpsearch info` answers from its cache
    names += modules("db") + modules("report")
    names += [m for m in modules("search") if m not in TRAINING]
    names += ["hpsearch.cli", "hpsearch.cli.query_cmds", "hpsearch.cli.output_cmds",
              "hpsearch.cli.db_cmds", "hpsearch.cli.study_cmds"]
    return names


def test_torch_free_modules_do_not_load_torch() -> None:
    """Imported one after another in one fresh interpreter: the first module after which torch
    is in sys.modules is the one that loaded it."""
    names = torch_free_modules()
    script = (
        "import importlib, json, sys\n"
        "for name in json.loads(sys.argv[1]):\n"
        "    importlib.import_module(name)\n"
        "    if 'torch' in sys.modules:\n"
        "        print(name); break\n"
    )
    out = subprocess.run([sys.executable, "-c", script, json.dumps(names)], capture_output=True,
                         text=True, timeout=120, check=True).stdout.strip()
    assert out == "", f"importing {out} loads torch (at module level)"


def imports_of(path: Path) -> set[str]:
    """Every module a file imports, anywhere in it (`from hpsearch import db` counts as
    hpsearch.db)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def reaches(found: set[str], forbidden: tuple[str, ...]) -> list[str]:
    return sorted(name for name in found
                  if any(name == f or name.startswith(f + ".") for f in forbidden))


RULES = {
    "trainer": ("optuna", "sqlalchemy", "alembic", "hpsearch.db", "hpsearch.search",
                "hpsearch.report", "hpsearch.cli", "hpsearch.api"),
    "db": ("torch", "hpsearch.trainer", "hpsearch.search", "hpsearch.report", "hpsearch.cli"),
    "report": ("torch", "hpsearch.trainer", "hpsearch.search", "hpsearch.cli"),
    "search": ("hpsearch.report", "hpsearch.cli"),
}


@pytest.mark.parametrize("part", sorted(RULES))
def test_parts_never_import_across(part: str) -> None:
    broken = {str(path.relative_to(PACKAGE)): bad
              for path in sorted((PACKAGE / part).rglob("*.py"))
              if (bad := reaches(imports_of(path), RULES[part]))}
    assert broken == {}, f"{part}/ imports what it must not: {broken}"


def test_the_kernel_imports_only_itself() -> None:
    ours = {f"hpsearch.{name}" for name in KERNEL} | {"hpsearch"}
    broken = {}
    for name in sorted(KERNEL):
        found = imports_of(PACKAGE / f"{name}.py")
        bad = [m for m in found if m.split(".")[0] in ("torch", "optuna", "sqlalchemy")
               or (m.startswith("hpsearch.") and ".".join(m.split(".")[:2]) not in ours)]
        if bad:
            broken[name] = sorted(bad)
    assert broken == {}, f"kernel modules import more than the kernel: {broken}"


def test_migrations_import_nothing_of_hpsearch() -> None:
    revisions = sorted(MIGRATIONS.glob("*.py"))
    assert revisions, f"no migrations in {MIGRATIONS}"
    broken = {path.name: bad for path in revisions
              if (bad := reaches(imports_of(path), ("hpsearch",)))}
    assert broken == {}, f"migrations that import hpsearch: {broken}"
