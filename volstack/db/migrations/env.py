"""Alembic environment: runs on the connection the Database hands over (or the configured URL)."""
from alembic import context
from sqlalchemy import create_engine

from volstack.db.models import Base
from volstack.db import image_models, snapshot_models, storage_models, tag_models, vm_snapshot_models  # noqa: F401  (registers the storage tables)

config = context.config
target_metadata = Base.metadata


def run() -> None:
    conn = config.attributes.get("connection")
    if conn is not None:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()
        return
    engine = create_engine(config.attributes.get("connection_url") or config.get_main_option("sqlalchemy.url"))
    with engine.begin() as conn:
        context.configure(connection=conn, target_metadata=target_metadata, render_as_batch=True)
        with context.begin_transaction():
            context.run_migrations()


run()
