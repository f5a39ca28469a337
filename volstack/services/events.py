"""Audit events: every state-changing command leaves one (listEvents)."""
from volstack.db.models import Event


def record(s, ctx, event_type: str, description: str, *, resource_type=None, resource_uuid=None,
           level="INFO", state="Completed") -> Event:
    ev = Event(event_type=event_type, description=description, level=level, state=state,
               account_id=ctx.account_id if ctx else None, user_id=ctx.user_id if ctx else None,
               domain_id=ctx.domain_id if ctx else None, resource_type=resource_type,
               resource_uuid=resource_uuid, job_uuid=ctx.job_uuid if ctx else None)
    s.add(ev)
    return ev
