"""image transfers: extract URLs and browser uploads

Revision ID: 0009
Revises: 0008
"""
from alembic import op
import sqlalchemy as sa


revision = '0009'
down_revision = '0008'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table('image_transfer',
    sa.Column('kind', sa.String(length=16), nullable=False),
    sa.Column('object_type', sa.String(length=16), nullable=False),
    sa.Column('object_id', sa.Integer(), nullable=False),
    sa.Column('object_uuid', sa.String(length=40), nullable=False),
    sa.Column('account_id', sa.Integer(), nullable=False),
    sa.Column('zone_id', sa.Integer(), nullable=True),
    sa.Column('store_id', sa.Integer(), nullable=False),
    sa.Column('host_id', sa.Integer(), nullable=True),
    sa.Column('install_path', sa.String(length=1024), nullable=False),
    sa.Column('own_copy', sa.Boolean(), nullable=False),
    sa.Column('mode', sa.String(length=16), nullable=True),
    sa.Column('url', sa.Text(), nullable=True),
    sa.Column('state', sa.String(length=32), nullable=False),
    sa.Column('expires', sa.DateTime(), nullable=False),
    sa.Column('error', sa.Text(), nullable=True),
    sa.Column('removed', sa.DateTime(), nullable=True),
    sa.Column('id', sa.Integer(), nullable=False),
    sa.Column('uuid', sa.String(length=40), nullable=False),
    sa.Column('created', sa.DateTime(), nullable=False),
    sa.ForeignKeyConstraint(['account_id'], ['account.id'], ),
    sa.ForeignKeyConstraint(['host_id'], ['host.id'], ondelete='SET NULL'),
    sa.ForeignKeyConstraint(['store_id'], ['image_store.id'], ),
    sa.ForeignKeyConstraint(['zone_id'], ['data_center.id'], ),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('uuid')
    )


def downgrade() -> None:
    op.drop_table('image_transfer')
