"""The Alembic migrations: up to head and back to base, and no drift from the models' metadata, on both databases."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

import app.all_tables  # noqa: F401
from app.config import Settings
from app.db import Base
from app.migrate import downgrade, upgrade
from app.sweeps.study import prepare_storage
from tests.stacks import postgres_database


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.production)])
def database_url(request, tmp_path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'm.db'}"
    else:
        with postgres_database() as url:
            yield url


def _tables(engine) -> set[str]:
    return set(inspect(engine).get_table_names())


def test_upgrade_downgrade_and_no_drift(database_url, tmp_path):
    upgrade(database_url)
    # `finetune migrate` also creates the sweeps' Optuna storage: its tables (and its own alembic_version) live in a
    # schema or file of their own, so they are neither drift nor left behind by a downgrade.
    prepare_storage(Settings(database_url=database_url, var_dir=tmp_path))
    engine = create_engine(database_url)
    assert set(Base.metadata.tables) <= _tables(engine)
    with engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn, opts={"compare_type": True}), Base.metadata)
    assert diff == []
    downgrade(database_url)
    assert _tables(engine) <= {"alembic_version"}
    upgrade(database_url)
    assert set(Base.metadata.tables) <= _tables(engine)
    engine.dispose()
