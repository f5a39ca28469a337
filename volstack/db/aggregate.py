"""Typed aggregates. The one place sums and counts are read, so every caller gets a Python int.

PostgreSQL answers SUM(bigint) as numeric, which psycopg returns as Decimal: JSON cannot encode it and
`Decimal / float` raises. A `coalesce(...) or 0` at each call site hid that only while sums were zero.
"""
from sqlalchemy import func, select


def total(s, column, *where) -> int:
    """Σ column over the rows matching where (0 when none match), as an int on every database."""
    return int(s.scalar(select(func.coalesce(func.sum(column), 0)).where(*where)))


def count(s, model, *where) -> int:
    """How many rows of model match where."""
    return int(s.scalar(select(func.count()).select_from(model).where(*where)))

