"""The Alembic migrations and the models describe the same schema."""

from __future__ import annotations

import asyncio
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, text

from limner.db import session as session_module
from limner.db.models import Base
from limner.db.session import Database
from tests.processes import clean_env


async def test_migrated_schema_matches_the_models(tmp_path: Path) -> None:
    url = f"sqlite+aiosqlite:///{tmp_path / 'm.db'}"
    db = await Database.open(url)
    await db.upgrade()
    await db.upgrade()  # idempotent
    await db.dispose()
    engine = create_engine(f"sqlite:///{tmp_path / 'm.db'}")
    try:
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


# --- a crash at any statement of any migration leaves a database that upgrades and starts ----------

_UPGRADE = """
import asyncio, sys
from limner.db.session import Database

async def main(url: str) -> None:
    db = await Database.open(url)
    try:
        await db.upgrade()
    finally:
        await db.dispose()

asyncio.run(main(sys.argv[1]))
"""
STARTS = ["base", "0001", "0002", "0003"]


def _upgrade_sync_to(path: Path, revision: str) -> None:
    if revision == "base":
        return
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.begin() as conn:
            cfg = Config()
            cfg.set_main_option("script_location", str(Path(session_module.__file__).with_name("migrations")))
            cfg.attributes["connection"] = conn
            command.upgrade(cfg, revision)
    finally:
        engine.dispose()


async def _statements_to_head(path: Path, monkeypatch: pytest.MonkeyPatch) -> int:
    count = 0

    def counting(*_args: object) -> None:
        nonlocal count
        count += 1

    monkeypatch.setattr(session_module, "_migration_crash_point", counting)
    db = await Database.open(f"sqlite+aiosqlite:///{path}")
    try:
        await db.upgrade()
    finally:
        await db.dispose()
    monkeypatch.undo()
    return count


def _schema_problems(path: Path) -> list[object]:
    engine = create_engine(f"sqlite:///{path}")
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn)
            return [
                *compare_metadata(context, Base.metadata),
                *([] if context.get_current_revision() == HEAD else ["not at head"]),
            ]
    finally:
        engine.dispose()


HEAD = "0004"


@pytest.mark.parametrize("start", STARTS)
async def test_a_sigkill_at_any_statement_of_a_migration_leaves_an_upgradable_database(
    tmp_path: Path, start: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    template = tmp_path / "template.db"
    await asyncio.to_thread(_upgrade_sync_to, template, start)
    counted = tmp_path / "counted.db"
    if template.exists():
        shutil.copy(template, counted)
    total = await _statements_to_head(counted, monkeypatch)
    assert total > 3
    points = sorted({1, total // 3, (2 * total) // 3, total})  # the first, two between, and the last statement
    for point in points:
        db_path = tmp_path / f"killed-at-{point}.db"
        if template.exists():
            shutil.copy(template, db_path)
        env = clean_env(LIMNER_CRASH_POINT=f"db.migration_statement@{point}:kill")
        killed = await asyncio.to_thread(
            subprocess.run,
            [sys.executable, "-c", _UPGRADE, f"sqlite+aiosqlite:///{db_path}"],
            env=env,
            capture_output=True,
            text=True,
            check=False,
            timeout=120,
        )
        assert killed.returncode == -signal.SIGKILL, killed.stderr
        db = await Database.open(f"sqlite+aiosqlite:///{db_path}")
        try:
            await db.upgrade()  # the upgrade after the crash succeeds ...
            async with db.unit_of_work() as session:  # ... and the database is usable
                await session.execute(text("SELECT count(*) FROM users"))
        finally:
            await db.dispose()
        assert await asyncio.to_thread(_schema_problems, db_path) == [], f"killed at statement {point} of {total}"
