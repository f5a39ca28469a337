from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext

from volstack.db.engine import Database
from volstack.db import image_models, snapshot_models, storage_models, tag_models, vm_snapshot_models  # noqa: F401  (registers the storage tables)
from volstack.db.models import DATABASE_ONLY_INDEXES, Base


def test_migrations_build_exactly_the_models(db_url):
    db = Database(db_url)
    db.upgrade()
    db.upgrade()            # a second start-up is a no-op
    with db.engine.connect() as conn:
        diff = [d for d in compare_metadata(MigrationContext.configure(conn), Base.metadata)
                if not (d[0] == "remove_index" and d[1].name in DATABASE_ONLY_INDEXES)]
    assert diff == [], "models changed without a migration: add one under volstack/db/migrations/versions"
    db.dispose()


def test_postgresql_serves_keywords_from_a_trigram_index(postgres):
    """listVolumes keyword=… is ILIKE '%…%' (escaped); on PostgreSQL the pg_trgm index answers it."""
    from sqlalchemy import select
    from volstack.db.storage_models import Volume
    from volstack.services.listing import ListQuery, keyword_filter
    db = Database(postgres.createdb("trgm"))
    db.upgrade()
    stmt = select(Volume.id).where(*keyword_filter(ListQuery(keyword="vol_42%"), Volume.name))
    sql = str(stmt.compile(db.engine, compile_kwargs={"literal_binds": True})).replace("%", "%%")
    with db.engine.begin() as conn:
        conn.exec_driver_sql("SET enable_seqscan = off")       # an empty table: ask whether the index can serve
        plan = "\n".join(r[0] for r in conn.exec_driver_sql("EXPLAIN " + sql))
    assert "ix_volumes_name_trgm" in plan, plan
    db.dispose()
