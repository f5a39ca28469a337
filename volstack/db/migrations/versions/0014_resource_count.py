"""resource_count: usage per account and allocated bytes per pool, maintained with every change

Revision ID: 0014
Revises: 0013
"""
from alembic import op
import sqlalchemy as sa


revision = '0014'
down_revision = '0013'
branch_labels = None
depends_on = None

# The counts as services/*.py recount them (updateResourceCount), filled once from the existing rows.
BACKFILL = """
INSERT INTO resource_count (scope, owner_id, resource_type, count)
SELECT scope, owner_id, resource_type, SUM(n) FROM (
  SELECT 'account' AS scope, account_id AS owner_id, 'volume' AS resource_type, 1 AS n
    FROM volumes WHERE removed IS NULL AND state NOT IN ('Destroy', 'Expunged')
  UNION ALL SELECT 'account', account_id, 'primary_storage', size
    FROM volumes WHERE removed IS NULL AND state NOT IN ('Destroy', 'Expunged')
  UNION ALL SELECT 'pool', pool_id, 'allocated', size
    FROM volumes WHERE pool_id IS NOT NULL AND removed IS NULL AND state NOT IN ('Expunged', 'Allocated')
  UNION ALL SELECT 'pool', pool_id, 'allocated', size FROM template_spool_ref WHERE size IS NOT NULL
  UNION ALL SELECT 'account', account_id, 'snapshot', 1
    FROM snapshots WHERE removed IS NULL AND state NOT IN ('Destroyed', 'Error')
  UNION ALL SELECT 'account', account_id, 'secondary_storage', physical_size
    FROM snapshots WHERE removed IS NULL AND store_id IS NOT NULL AND physical_size IS NOT NULL
  UNION ALL SELECT 'account', account_id, 'template', 1 FROM vm_template WHERE removed IS NULL
  UNION ALL SELECT 'account', t.account_id, 'secondary_storage', r.physical_size
    FROM template_store_ref r JOIN vm_template t ON t.id = r.template_id
    WHERE r.state NOT IN ('Destroyed', 'Failed') AND r.physical_size IS NOT NULL
) AS c GROUP BY scope, owner_id, resource_type
"""


def upgrade() -> None:
    op.create_table(
        'resource_count',
        sa.Column('scope', sa.String(length=16), nullable=False),
        sa.Column('owner_id', sa.Integer(), nullable=False),
        sa.Column('resource_type', sa.String(length=32), nullable=False),
        sa.Column('count', sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint('scope', 'owner_id', 'resource_type'),
    )
    op.execute(BACKFILL)


def downgrade() -> None:
    op.drop_table('resource_count')
