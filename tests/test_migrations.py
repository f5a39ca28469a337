from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from volstack.db.engine import Database
from volstack.db import image_models, snapshot_models, storage_models, tag_models, vm_snapshot_models  # noqa: F401  (registers the storage tables)
from volstack.db.models import Base


def test_migrations_build_exactly_the_models(db_url):
    db = Database(db_url)
    db.upgrade()
    db.upgrade()            # a second start-up is a no-op
    with db.engine.connect() as conn:
        diff = compare_metadata(MigrationContext.configure(conn), Base.metadata)
    assert diff == [], "models changed without a migration: add one under volstack/db/migrations/versions"
    db.dispose()
