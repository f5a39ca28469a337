"""ISOs in guests (vm_instance.iso_id, iso_pool_id) and the registration-time checksum check of
direct-download templates (vm_template.verify_*)

Revision ID: 0010
Revises: 0009
"""
from alembic import op
import sqlalchemy as sa


revision = '0010'
down_revision = '0009'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('vm_instance') as batch:
        batch.add_column(sa.Column('iso_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('iso_pool_id', sa.Integer(), nullable=True))
    with op.batch_alter_table('vm_template') as batch:
        batch.add_column(sa.Column('verify_state', sa.String(length=16), nullable=True))
        batch.add_column(sa.Column('verify_pct', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('verify_error', sa.Text(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table('vm_template') as batch:
        batch.drop_column('verify_error')
        batch.drop_column('verify_pct')
        batch.drop_column('verify_state')
    with op.batch_alter_table('vm_instance') as batch:
        batch.drop_column('iso_pool_id')
        batch.drop_column('iso_id')
