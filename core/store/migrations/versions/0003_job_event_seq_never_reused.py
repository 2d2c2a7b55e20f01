"""job_event.seq is never reused on SQLite (AUTOINCREMENT)

SQLite hands out max(rowid)+1, so deleting the job that holds the newest events would let a new event
take a seq a subscriber already saw. AUTOINCREMENT needs the table rebuilt; PostgreSQL's sequence never
reuses values, so nothing changes there.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27
"""

from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("job_event", recreate="always", table_kwargs={"sqlite_autoincrement": True}):
        pass


def downgrade() -> None:
    if op.get_bind().dialect.name != "sqlite":
        return
    with op.batch_alter_table("job_event", recreate="always", table_kwargs={"sqlite_autoincrement": False}):
        pass
