"""job details: a consumer's name, description, tags and commands for a job; job_tag to find jobs by tag

GA4GH TES tasks carry a name, a description and tags, and are listed by name prefix and by tag; an asset
may let a task bring its own commands.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-04
"""

import sqlalchemy as sa
import sqlmodel
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.add_column(sa.Column("name", sqlmodel.sql.sqltypes.AutoString(length=200), nullable=True))
        batch_op.add_column(sa.Column("description", sa.Text(), nullable=True))
        batch_op.add_column(sa.Column("tags", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("commands", sa.JSON(), nullable=True))
        batch_op.create_index(batch_op.f("ix_job_name"), ["name"], unique=False)
    op.create_table(
        "job_tag",
        sa.Column("job_id", sqlmodel.sql.sqltypes.AutoString(length=40), nullable=False),
        sa.Column("key", sqlmodel.sql.sqltypes.AutoString(length=100), nullable=False),
        sa.Column("value", sqlmodel.sql.sqltypes.AutoString(length=500), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "key"),
    )
    op.create_index("ix_job_tag_key_value", "job_tag", ["key", "value"], unique=False)


def downgrade() -> None:
    op.drop_index("ix_job_tag_key_value", table_name="job_tag")
    op.drop_table("job_tag")
    with op.batch_alter_table("job", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_job_name"))
        batch_op.drop_column("commands")
        batch_op.drop_column("tags")
        batch_op.drop_column("description")
        batch_op.drop_column("name")
