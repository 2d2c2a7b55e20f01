"""edc provisioning

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27
"""

from alembic import op
import sqlalchemy as sa
import sqlmodel


revision = '0002'
down_revision = '0001'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.add_column(sa.Column('transfer_process_id', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
        batch_op.add_column(sa.Column('resource_definition_id', sqlmodel.sql.sqltypes.AutoString(length=500), nullable=True))
        batch_op.add_column(sa.Column('callback_address', sqlmodel.sql.sqltypes.AutoString(length=2000), nullable=True))
        batch_op.add_column(sa.Column('secret_salt', sqlmodel.sql.sqltypes.AutoString(length=64), nullable=True))
        batch_op.add_column(sa.Column('policy', sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column('callback_state', sqlmodel.sql.sqltypes.AutoString(length=20), nullable=True))
        batch_op.add_column(sa.Column('callback_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch_op.add_column(sa.Column('callback_next_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('callback_error', sa.Text(), nullable=True))
        batch_op.add_column(sa.Column('deprovisioned_at', sa.DateTime(timezone=True), nullable=True))
        batch_op.add_column(sa.Column('files_purged', sa.Boolean(), nullable=False, server_default=sa.false()))
        batch_op.create_index(batch_op.f('ix_grant_callback_state'), ['callback_state'], unique=False)
        batch_op.create_unique_constraint('uq_grant_transfer_process_id', ['transfer_process_id'])



def downgrade() -> None:
    with op.batch_alter_table('grant', schema=None) as batch_op:
        batch_op.drop_constraint('uq_grant_transfer_process_id', type_='unique')
        batch_op.drop_index(batch_op.f('ix_grant_callback_state'))
        batch_op.drop_column('files_purged')
        batch_op.drop_column('deprovisioned_at')
        batch_op.drop_column('callback_error')
        batch_op.drop_column('callback_next_at')
        batch_op.drop_column('callback_attempts')
        batch_op.drop_column('callback_state')
        batch_op.drop_column('policy')
        batch_op.drop_column('secret_salt')
        batch_op.drop_column('callback_address')
        batch_op.drop_column('resource_definition_id')
        batch_op.drop_column('transfer_process_id')

