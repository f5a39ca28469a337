"""incremental snapshots: throttled job queues

Revision ID: 0011
Revises: 0010
"""
from alembic import op
import sqlalchemy as sa


revision = '0011'
down_revision = '0010'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('async_job') as batch:
        batch.add_column(sa.Column('queue_key', sa.String(length=128), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('async_job') as batch:
        batch.drop_column('queue_key')
