"""token expiry and prefix, case-insensitive user names

Revision ID: 0004
Revises: 0003

User names become case-insensitive: every name is stored lower-cased. Names that differed only by case
(``Alice`` and ``alice``) cannot both keep it: the account that can sign in (has a password) keeps the
lower-cased name, the oldest one among equals; each other one is renamed ``<name>-2``, ``<name>-3``...
(the first free such name), and the renames are logged as warnings so an operator can tell the people
concerned. No account, image or token is lost. The downgrade keeps the lower-cased names.
"""

import logging

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None

log = logging.getLogger("limner.migrations")


def upgrade() -> None:
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.add_column(sa.Column("expires_at", sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column("prefix", sa.String(length=16), nullable=True))
        batch_op.create_index(batch_op.f("ix_api_tokens_expires_at"), ["expires_at"], unique=False)
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.create_index(batch_op.f("ix_web_sessions_expires_at"), ["expires_at"], unique=False)
    _lower_case_names()


def _lower_case_names() -> None:
    conn = op.get_bind()
    rows = conn.execute(
        sa.text("SELECT id, name, password_hash IS NOT NULL AS can_sign_in FROM users ORDER BY created_at, id")
    ).all()
    groups: dict[str, list[tuple[str, str, bool]]] = {}
    for user_id, name, can_sign_in in rows:
        groups.setdefault(name.lower(), []).append((user_id, name, bool(can_sign_in)))
    taken = set(groups)
    renames: dict[str, str] = {}  # user ID -> final name, for every row whose name changes
    for lower, members in groups.items():
        keeper = sorted(members, key=lambda member: not member[2])[0]  # stable: the oldest among equals
        for user_id, name, _ in members:
            if user_id == keeper[0]:
                final = lower
            else:
                n = 2
                while f"{lower}-{n}" in taken:
                    n += 1
                final = f"{lower}-{n}"
                taken.add(final)
                log.warning("user %r renamed to %r: names are case-insensitive now", name, final)
            if final != name:
                renames[user_id] = final
    update = sa.text("UPDATE users SET name = :name WHERE id = :id")
    for user_id in renames:  # two passes, so no intermediate state breaks the unique constraint
        conn.execute(update, {"name": f"\x00{user_id}", "id": user_id})
    for user_id, final in renames.items():
        conn.execute(update, {"name": final, "id": user_id})


def downgrade() -> None:
    with op.batch_alter_table("web_sessions", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_web_sessions_expires_at"))
    with op.batch_alter_table("api_tokens", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_api_tokens_expires_at"))
        batch_op.drop_column("prefix")
        batch_op.drop_column("expires_at")
