"""snapshots kept on primary (location_type) and backup retries

Revision ID: 0012
Revises: 0011
"""
from alembic import op
import sqlalchemy as sa


revision = '0012'
down_revision = '0011'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('snapshots') as batch:
        batch.add_column(sa.Column('location_type', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('backup_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('backup_retry_at', sa.DateTime(), nullable=True))
        batch.create_index('ix_snapshots_backup_retry_at', ['backup_retry_at'])


def downgrade() -> None:
    with op.batch_alter_table('snapshots') as batch:
        batch.drop_index('ix_snapshots_backup_retry_at')
        batch.drop_column('backup_retry_at')
        batch.drop_column('backup_attempts')
        batch.drop_column('location_type')
