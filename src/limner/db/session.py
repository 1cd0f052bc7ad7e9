"""Engine, sessions and the unit of work; migrations run through Alembic on the same engine.

One unit of work per operation: it commits when the block ends normally and rolls back on any
exception, so a failed save leaves no row behind. SQLite gets WAL, a busy timeout and foreign keys,
because the CLI and the server may use the same file at once.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import anyio.to_thread
from alembic import command
from alembic.config import Config
from sqlalchemy import create_engine, event
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker, create_async_engine

from limner.crashpoints import crash_point_sync
from limner.errors import StorageError

__all__ = ["Database"]

_MIGRATIONS = Path(__file__).with_name("migrations")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA busy_timeout=10000")
    cursor.close()


class Database:
    """Owns the engine; hands out units of work."""

    def __init__(self, url: str, engine: AsyncEngine) -> None:
        self.url = url
        self.is_sqlite = url.startswith("sqlite")
        self.engine = engine
        if self.is_sqlite:
            event.listen(self.engine.sync_engine, "connect", _sqlite_pragmas)
        self._sessions = async_sessionmaker(self.engine, expire_on_commit=False)
        self._write_lock = asyncio.Lock()

    @classmethod
    async def open(cls, url: str) -> Database:
        """Create the engine off the event loop (dialects touch the filesystem while setting up)."""
        is_sqlite = url.startswith("sqlite")
        engine = await anyio.to_thread.run_sync(lambda: create_async_engine(url, pool_pre_ping=not is_sqlite))
        return cls(url, engine)

    @asynccontextmanager
    async def unit_of_work(self, *, write: bool = False) -> AsyncIterator[AsyncSession]:
        """Commit on success, roll back on failure; database errors become StorageError.

        ``write=True`` on SQLite queues writers in this process before they take a connection: SQLite has
        one writer at a time, and writers waiting inside the driver would hold pooled connections that
        readers need (measured: at 50 concurrent saves, reads waited 200 ms for a connection).
        """
        if write and self.is_sqlite:
            async with self._write_lock, self._session() as session:
                yield session
        else:
            async with self._session() as session:
                yield session

    @asynccontextmanager
    async def _session(self) -> AsyncIterator[AsyncSession]:
        async with self._sessions() as session:
            try:
                yield session
                await session.commit()
            except SQLAlchemyError as exc:
                await session.rollback()
                raise StorageError("The database could not complete the operation.") from exc
            except BaseException:
                await session.rollback()
                raise

    async def upgrade(self) -> None:
        """Apply every Alembic migration up to head (the server does this on start).

        Alembic is synchronous and reads its scripts from disk, so it runs in a worker thread on a
        synchronous engine of the same database, never on the event loop.
        """
        await anyio.to_thread.run_sync(self._upgrade_sync)

    def _upgrade_sync(self) -> None:
        if self.is_sqlite:
            _ensure_sqlite_dir(self.url)
        engine = create_engine(sync_url(self.url))
        if self.is_sqlite:
            _transactional_ddl(engine)
        event.listen(engine, "after_cursor_execute", _migration_crash_point)
        try:
            with engine.begin() as conn:
                _run_upgrade(conn)
        finally:
            engine.dispose()

    async def dispose(self) -> None:
        """Close pooled connections."""
        await self.engine.dispose()


def _transactional_ddl(engine: Engine) -> None:
    """Make every migration step on SQLite part of one transaction, so a crash leaves the old schema.

    Python's ``sqlite3`` (3.11) opens transactions only before INSERT/UPDATE/DELETE and runs ``CREATE``,
    ``ALTER`` and ``DROP`` in autocommit: a migration killed halfway left some tables made and the
    version not recorded, and the next upgrade failed on "table already exists". SQLAlchemy's documented
    recipe: take transaction control from the driver and emit ``BEGIN`` ourselves (``IMMEDIATE``: the
    write lock is taken at once, so a concurrent ``limner serve`` waits rather than failing midway).
    """

    @event.listens_for(engine, "connect")
    def _driver_autocommit(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.isolation_level = None

    @event.listens_for(engine, "begin")
    def _begin(connection: Connection) -> None:
        connection.exec_driver_sql("BEGIN IMMEDIATE")


def _migration_crash_point(*_args: Any) -> None:
    crash_point_sync("db.migration_statement")  # tests kill the upgrade after any statement


def _run_upgrade(connection: Connection) -> None:
    cfg = Config()
    cfg.set_main_option("script_location", str(_MIGRATIONS))
    cfg.attributes["connection"] = connection
    command.upgrade(cfg, "head")


def sync_url(url: str) -> str:
    """The synchronous driver URL for migrations: stdlib sqlite3, or psycopg for PostgreSQL."""
    return url.replace("sqlite+aiosqlite", "sqlite").replace("postgresql+asyncpg", "postgresql+psycopg")


def _ensure_sqlite_dir(url: str) -> None:
    path = url.split("///", 1)[1] if "///" in url else ""
    if path and path != ":memory:":
        Path(path).parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        # SQLite gives its -wal, -shm and -journal files the database file's mode, so a database file
        # created private keeps every file of it private whatever the umask.
        os.close(os.open(path, os.O_RDWR | os.O_CREAT, 0o600))
