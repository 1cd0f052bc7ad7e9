"""Alembic environment: runs on the connection limner hands over (see Database.upgrade)."""

from alembic import context

from limner.db.models import Base

connection = context.config.attributes.get("connection")
if connection is None:
    raise RuntimeError("Run migrations through `limner db upgrade`, which supplies the connection.")

context.configure(connection=connection, target_metadata=Base.metadata, render_as_batch=True)
with context.begin_transaction():
    context.run_migrations()
