"""snapshot policies and their fired slots

Revision ID: 0008
Revises: 0006
Create Date: 2026-11-21 12:25:00.000000
"""
from alembic import op
import sqlalchemy as sa


revision = '0008'
down_revision = '0006'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('snapshot_policy',
    sa.Column('volume_id', sa.Integer(), nullable=False),
    sa.Column('schedule', sa.String(length=100), nullable=False),
    sa.Column('timezone', sa.String(length=100), nullable=False),
    sa.Column('interval', sa.Integer(), nullable=False),
    sa.Column('max_snaps', sa.Integer(), nullable=False),
    sa.Column('display', sa.Boolean(), nullable=False),
    sa.Column('next_at', sa.DateTime(), nullable=True),
    sa.Column('inactive_since', sa.DateTime(), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uuid', sa.String(length=40), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['volume_id'], ['volumes.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('uuid'),
    sa.UniqueConstraint('volume_id', 'interval')
    )
    with op.batch_alter_table('snapshot_policy', schema=None) as batch_op:
        batch_op.create_index(batch_op.f('ix_snapshot_policy_next_at'), ['next_at'], unique=False)

    op.create_table('snapshot_schedule',
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('policy_id', sa.Integer(), nullable=False),
    sa.Column('volume_id', sa.Integer(), nullable=False),
    sa.Column('scheduled_at', sa.DateTime(), nullable=False),
    sa.Column('fired_at', sa.DateTime(), nullable=False),
    sa.Column('snapshot_id', sa.Integer(), nullable=True),
    sa.Column('job_uuid', sa.String(length=40), nullable=True),
    sa.Column('skipped', sa.Text(), nullable=True),
    sa.ForeignKeyConstraint(['policy_id'], ['snapshot_policy.id'], ondelete='CASCADE'),
    sa.ForeignKeyConstraint(['snapshot_id'], ['snapshots.id'], ),
    sa.ForeignKeyConstraint(['volume_id'], ['volumes.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('policy_id', 'scheduled_at')
    )


def downgrade() -> None:
    op.drop_table('snapshot_schedule')
    with op.batch_alter_table('snapshot_policy', schema=None) as batch_op:
        batch_op.drop_index(batch_op.f('ix_snapshot_policy_next_at'))
    op.drop_table('snapshot_policy')
