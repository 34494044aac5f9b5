"""Result databases committed with the project (bench/results, docs' examples) are at the
current schema: the commands the docs give on them must work as written, and query commands
refuse an older schema."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from hpsearch.db.migrate import current_revision, head_revision

ROOT = Path(__file__).resolve().parents[2]
# kept at an old revision on purpose: the migration tests start from them
OLD_ON_PURPOSE = {"tests/fixtures/release-0002.db"}


def committed_databases() -> list[str]:
    listed = subprocess.run(["git", "ls-files", "*.db"], cwd=ROOT, capture_output=True,
                            text=True, check=False)
    if listed.returncode != 0:
        pytest.skip(f"git ls-files failed: {listed.stderr.strip()}")
    return [path for path in listed.stdout.split() if path not in OLD_ON_PURPOSE]


def test_there_are_committed_result_databases() -> None:
    assert any(path.startswith("bench/results/") for path in committed_databases())


@pytest.mark.parametrize("path", committed_databases())
def test_a_committed_database_is_at_the_current_schema(path: str) -> None:
    assert current_revision(f"sqlite:///{ROOT / path}") == head_revision(), \
        f"run `hpsearch db upgrade --db sqlite:///{path}` and commit it"
