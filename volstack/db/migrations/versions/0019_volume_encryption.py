"""volume encryption: passphrases (encrypted with the server key) and the volumes and snapshots that use them

Revision ID: 0019
Revises: 0018
"""
from alembic import op
import sqlalchemy as sa


revision = '0019'
down_revision = '0018'
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        'passphrase',
        sa.Column('id', sa.Integer(), primary_key=True),
        sa.Column('passphrase', sa.Text(), nullable=False),
        sa.Column('created', sa.DateTime(), nullable=False))
    with op.batch_alter_table('volumes') as batch:
        batch.add_column(sa.Column('passphrase_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('encrypt_format', sa.String(length=16), nullable=True))
        batch.create_foreign_key('fk_volumes_passphrase', 'passphrase', ['passphrase_id'], ['id'])
    with op.batch_alter_table('snapshots') as batch:
        batch.add_column(sa.Column('passphrase_id', sa.Integer(), nullable=True))
        batch.add_column(sa.Column('encrypt_format', sa.String(length=16), nullable=True))
        batch.create_foreign_key('fk_snapshots_passphrase', 'passphrase', ['passphrase_id'], ['id'])


def downgrade() -> None:
    with op.batch_alter_table('snapshots') as batch:
        batch.drop_constraint('fk_snapshots_passphrase', type_='foreignkey')
        batch.drop_column('encrypt_format')
        batch.drop_column('passphrase_id')
    with op.batch_alter_table('volumes') as batch:
        batch.drop_constraint('fk_volumes_passphrase', type_='foreignkey')
        batch.drop_column('encrypt_format')
        batch.drop_column('passphrase_id')
    op.drop_table('passphrase')
