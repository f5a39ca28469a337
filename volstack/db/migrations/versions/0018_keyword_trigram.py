"""PostgreSQL: a trigram index serves listVolumes' keyword (ILIKE '%…%') instead of a scan of every name

Revision ID: 0018
Revises: 0017
"""
import logging

from alembic import op


revision = '0018'
down_revision = '0017'
branch_labels = None
depends_on = None
log = logging.getLogger("volstack.migrations")


def upgrade() -> None:
    bind = op.get_bind()
    if bind.dialect.name != "postgresql":
        return
    try:
        with bind.begin_nested():          # pg_trgm ships with Debian's postgresql package; a role that may not
            bind.exec_driver_sql("CREATE EXTENSION IF NOT EXISTS pg_trgm")    # create it keeps the plain scan
    except Exception as exc:
        log.warning("pg_trgm is not available (%s): keyword searches scan the names", exc)
        return
    bind.exec_driver_sql("CREATE INDEX IF NOT EXISTS ix_volumes_name_trgm ON volumes USING gin (name gin_trgm_ops)")


def downgrade() -> None:
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP INDEX IF EXISTS ix_volumes_name_trgm")
