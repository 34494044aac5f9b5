"""Ships the top-level alembic/ folder inside the wheel as the package hpsearch._alembic.

pyproject.toml cannot map one extra folder into the package while still finding the others
automatically (a find directive and an explicit package list exclude each other), so this
file adds it to what find_packages() finds. Everything else lives in pyproject.toml.
"""

from setuptools import find_packages, setup

setup(
    packages=[*find_packages(include=["hpsearch*"]), "hpsearch._alembic",
              "hpsearch._alembic.versions"],
    package_dir={"hpsearch._alembic": "alembic"},
    package_data={"hpsearch._alembic": ["script.py.mako"]},
)
