"""indexes for every filter the list commands offer (owner, state, pool, VM, zone, offering, name); the per-account
counts of listed volumes

Revision ID: 0017
Revises: 0016
"""
from alembic import op


revision = '0017'
down_revision = '0016'
branch_labels = None
depends_on = None

INDEXES = [
    ("ix_volumes_account", "volumes", ["account_id", "id"]), ("ix_volumes_pool", "volumes", ["pool_id"]),
    ("ix_volumes_vm", "volumes", ["vm_id"]), ("ix_volumes_zone", "volumes", ["zone_id"]),
    ("ix_volumes_state", "volumes", ["state"]), ("ix_volumes_offering", "volumes", ["disk_offering_id"]),
    ("ix_volumes_name", "volumes", ["name"]), ("ix_volumes_template", "volumes", ["template_id"]),
    ("ix_vm_instance_account", "vm_instance", ["account_id", "id"]), ("ix_vm_instance_host", "vm_instance", ["host_id"]),
    ("ix_vm_instance_zone", "vm_instance", ["zone_id"]), ("ix_vm_instance_state", "vm_instance", ["state"]),
    ("ix_vm_instance_template", "vm_instance", ["template_id"]),
    ("ix_snapshots_account", "snapshots", ["account_id", "id"]), ("ix_snapshots_volume", "snapshots", ["volume_id"]),
    ("ix_snapshots_parent", "snapshots", ["parent_id"]), ("ix_snapshots_state", "snapshots", ["state"]),
    ("ix_event_account", "event", ["account_id", "id"]), ("ix_async_job_account", "async_job", ["account_id", "id"]),
]


# the counts a plain listVolumes page reads instead of counting (services/volumes.py _listed_total)
BACKFILL = """
INSERT INTO resource_count (scope, owner_id, resource_type, count)
SELECT 'account', account_id, 'volume_rows', COUNT(*) FROM volumes
  WHERE removed IS NULL AND state != 'Expunged' GROUP BY account_id
UNION ALL
SELECT 'account', account_id, 'volume_rows_destroy', COUNT(*) FROM volumes
  WHERE removed IS NULL AND state = 'Destroy' GROUP BY account_id
"""


def upgrade() -> None:
    for name, table, cols in INDEXES:
        op.create_index(name, table, cols)
    op.execute(BACKFILL)


def downgrade() -> None:
    for name, table, _ in INDEXES:
        op.drop_index(name, table_name=table)
