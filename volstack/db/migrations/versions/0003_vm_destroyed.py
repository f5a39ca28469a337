"""vm_instance.destroyed_at: when a VM was destroyed, for the expunge sweep

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-21 09:20:00
"""
from alembic import op
import sqlalchemy as sa


revision = '0003'
down_revision = '0002'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('vm_instance') as batch:
        batch.add_column(sa.Column('destroyed_at', sa.DateTime(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('vm_instance') as batch:
        batch.drop_column('destroyed_at')
