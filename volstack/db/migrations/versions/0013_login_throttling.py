"""failed-login count and backoff on users; session keys stored hashed (the clear ones are dropped)

Revision ID: 0013
Revises: 0012
"""
from alembic import op
import sqlalchemy as sa


revision = '0013'
down_revision = '0012'
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table('user') as batch:
        batch.add_column(sa.Column('login_attempts', sa.Integer(), nullable=False, server_default='0'))
        batch.add_column(sa.Column('login_blocked_until', sa.DateTime(), nullable=True))
    # sessions were keyed by the key in clear: none can be looked up by its hash, and none should stay on disk
    op.execute("DELETE FROM api_session")


def downgrade() -> None:
    op.execute("DELETE FROM api_session")
    with op.batch_alter_table('user') as batch:
        batch.drop_column('login_blocked_until')
        batch.drop_column('login_attempts')
