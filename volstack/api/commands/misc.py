"""listApis (generated from the declarations) and listEvents."""
from sqlalchemy import select

from volstack.api.commands.common import list_query, lst
from volstack.api.registry import (API, DATE, INTEGER, OWNER, OWNER_LIST_PARAMS, STRING, USER, UUID, Lst, Param as P,
                                   View, role_allows)
from volstack.api.registry import Field as F
from volstack.api.views import EVENT
from volstack.db.models import Event
from volstack.services.context import owner_filter
from volstack.services.listing import keyword_filter, paginate


def describe(cmd, account_type: int = 1) -> dict:
    """The listApis entry of one command (what cloudmonkey's sync caches), as the caller's role sees it: only the
    parameters it may pass and the fields it may be shown."""
    params = [{"name": p.name, "description": p.description, "type": p.type, "length": p.length,
               "required": p.required, "related": "", **({"since": p.since} if p.since else {})}
              for p in cmd.params if p.allowed(account_type)]
    fields = cmd.view.fields if cmd.view else ([F("success", "true if operation is executed successfully", None, "boolean"),
                                                F("displaytext", "any text associated with the success or failure", None)]
                                               if cmd.response_key == "success" else [])
    response = [{"name": f.name, "description": f.description, "type": f.type} for f in fields
                if f.access in (USER, OWNER) or role_allows(f.access, account_type)]
    if cmd.is_async:
        response += [{"name": "jobid", "description": "the UUID of the latest async job acting on this object", "type": "string"},
                     {"name": "jobstatus", "description": "the current status of the latest async job acting on this object", "type": "integer"}]
    return {"name": cmd.name, "description": cmd.description, "isasync": cmd.is_async, "since": cmd.since,
            "related": cmd.related, "type": "", "params": params, "response": response}


API_VIEW = View("api", [F("name", "the name of the api command", None), F("description", "description of the api", None),
                        F("isasync", "true if api is asynchronous", None, "boolean"), F("since", "version of CloudStack the api was introduced in", None),
                        F("related", "comma separated related apis", None), F("type", "response field type", None),
                        F("params", "the list params the api accepts", None, "list"), F("response", "api response fields", None, "list")])


@API.command("listApis", "lists all available apis on the server, provided by the Api Discovery plugin",
             [P("name", STRING, "API name")], view=API_VIEW, access=USER, is_list=False)
def list_apis(req, p):
    cmds = [c for c in API.commands.values() if c.allowed(req.ctx.account_type)]
    if p.name:
        cmds = [c for c in cmds if c.name.lower() == p.name.lower()]
        if not cmds:
            from volstack.errors import InvalidParameter
            raise InvalidParameter(f"Api Discovery plugin was unable to find an api by that name or api is not available for user: {p.name}")
    items = [describe(c, req.ctx.account_type) for c in sorted(cmds, key=lambda c: c.name)]
    return Lst("api", items, len(items))


@API.command("listEvents", "A command to list events.", [
    P("id", UUID, "the ID of the event", entity="Event"),
    P("type", STRING, "the event type (see event types)"),
    P("level", STRING, "the event level (INFO, WARN, ERROR)"),
    P("startdate", DATE, "the start date range of the list you want to retrieve (use format \"yyyy-MM-dd\" or the new format \"yyyy-MM-dd HH:mm:ss\")"),
    P("enddate", DATE, "the end date range of the list you want to retrieve (use format \"yyyy-MM-dd\" or the new format \"yyyy-MM-dd HH:mm:ss\")"),
    P("duration", INTEGER, "the duration of the event"),
    P("resourceid", UUID, "the ID of the resource associated with the event"),
    P("resourcetype", STRING, "the type of the resource associated with the event"),
    *OWNER_LIST_PARAMS], view=EVENT, is_list=True, access=USER)
def list_events(req, p):
    from datetime import datetime, timezone
    q = list_query(req, p)
    stmt = select(Event).where(*owner_filter(req.s, req.ctx, Event, listall=q.listall, isrecursive=q.isrecursive,
                                             account=q.account, domain_uuid=q.domainid)).order_by(Event.id.desc())
    for col, val in ((Event.uuid, p.id), (Event.event_type, p.type), (Event.level, p.level),
                     (Event.resource_uuid, p.resourceid)):
        if val:
            stmt = stmt.where(col == val)
    if p.resourcetype:
        stmt = stmt.where(Event.resource_type.ilike(p.resourcetype))

    def utc(v):
        d = datetime.fromisoformat(v)
        return d.astimezone(timezone.utc).replace(tzinfo=None) if d.tzinfo else d
    if p.startdate:
        stmt = stmt.where(Event.created >= utc(p.startdate))
    if p.enddate:
        stmt = stmt.where(Event.created <= utc(p.enddate))
    stmt = stmt.where(*keyword_filter(q, Event.description, Event.event_type))
    return lst(req, EVENT, paginate(req.s, stmt, q))



