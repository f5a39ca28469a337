"""Resource tags and resource details: createTags, deleteTags, listTags, addResourceDetail,
removeResourceDetail, listResourceDetails."""
from volstack.api.commands.common import list_query, lst
from volstack.api.registry import (API, BOOLEAN, LIST, MAP, OWNER_LIST_PARAMS, ROOT, STRING, USER, Field as F,
                                   Param as P, Success, View)
from volstack.api.views import TAG
from volstack.services import tags


def _sync(req, p, instance):
    """Tag and detail jobs of one resource type run one after the other: a key is on a resource once, and the
    jobs are short (a key per resource set would not bound the key's length)."""
    return f"tags:{(p.resourcetype or '').lower()}", None


RESOURCE_TYPES = "one of " + ", ".join(sorted(k.name for k in tags.KINDS.values() if k.tags))
DETAIL_TYPES = "one of " + ", ".join(sorted(k.name for k in tags.KINDS.values() if k.details))


@API.command("createTags", "Creates resource tag(s)", [
    P("resourceids", LIST, "list of resources to create the tags for", required=True),
    P("resourcetype", STRING, f"type of the resource: {RESOURCE_TYPES}", required=True),
    P("tags", MAP, "Map of tags (key/value pairs)", required=True),
    P("customer", STRING, "identifies client specific tag. When the value is not null, the tag can't be used by cloudStack code internally"),
], response_key="success", is_async=True, access=USER, since="4.0.0", sync=_sync, on_interrupt="retry")
def create_tags(req, p):
    tags.create_tags(req.s, req.ctx, p.resourceids, p.resourcetype, p.tags, p.customer)
    return Success()


@API.command("deleteTags", "Deleting resource tag(s)", [
    P("resourceids", LIST, "Delete tags for resource id(s)", required=True),
    P("resourcetype", STRING, f"Delete tag by resource type: {RESOURCE_TYPES}", required=True),
    P("tags", MAP, "Delete tags matching key/value pairs (a key without a value: any value; none: every tag)"),
], response_key="success", is_async=True, access=USER, since="4.0.0", sync=_sync, on_interrupt="retry")
def delete_tags(req, p):
    tags.delete_tags(req.s, req.ctx, p.resourceids, p.resourcetype, p.tags)
    return Success()


@API.command("listTags", "List resource tag(s)", [
    P("key", STRING, "list by key"),
    P("value", STRING, "list by value"),
    P("resourceid", STRING, "list by resource id"),
    P("resourcetype", STRING, "list by resource type"),
    P("customer", STRING, "list by customer name"),
    *OWNER_LIST_PARAMS,
], view=TAG, is_list=True, access=USER, since="4.0.0")
def list_tags(req, p):
    return lst(req, TAG, tags.list_tags(req.s, req.ctx, list_query(req, p), key=p.key, value=p.value,
                                         resourceid=p.resourceid, resourcetype=p.resourcetype, customer=p.customer))


RESOURCEDETAIL = View("resourcedetail", [
    F("resourceid", "ID of the resource", lambda r, lk: r[1]),
    F("resourcetype", "the type of the resource", lambda r, lk: r[0].resource_type),
    F("key", "key of the resource detail", lambda r, lk: r[0].name),
    F("value", "value of the resource detail", lambda r, lk: r[0].value),
    F("fordisplay", "if detail is returned to the regular user", lambda r, lk: r[0].display, "boolean", access=ROOT),
])


@API.command("addResourceDetail", "Adds detail for the Resource.", [
    P("resourceid", STRING, "resource id to create the details for", required=True),
    P("resourcetype", STRING, f"type of the resource: {DETAIL_TYPES}", required=True),
    P("details", MAP, "Map of (key/value pairs)", required=True),
    P("fordisplay", BOOLEAN, "pass false if you want this detail to be disabled for the regular user. True by default"),
], response_key="success", is_async=True, access=USER, since="4.2.0", sync=_sync, on_interrupt="retry")
def add_resource_detail(req, p):
    tags.add_details(req.s, req.ctx, p.resourceid, p.resourcetype, p.details, p.fordisplay)
    return Success()


@API.command("removeResourceDetail", "Removes detail for the Resource.", [
    P("resourceid", STRING, "Delete details for resource id", required=True),
    P("resourcetype", STRING, f"Delete detail by resource type: {DETAIL_TYPES}", required=True),
    P("key", STRING, "Delete details matching key/value pairs"),
], response_key="success", is_async=True, access=USER, since="4.2.0", sync=_sync, on_interrupt="retry")
def remove_resource_detail(req, p):
    tags.remove_details(req.s, req.ctx, p.resourceid, p.resourcetype, p.key)
    return Success()


@API.command("listResourceDetails", "List resource detail(s)", [
    P("resourcetype", STRING, f"list by resource type: {DETAIL_TYPES}", required=True),
    P("resourceid", STRING, "list by resource id"),
    P("key", STRING, "list by key"),
    P("value", STRING, "list by key, value. Needs to be passed only along with key"),
    P("fordisplay", BOOLEAN, "if set to true, only details marked with display=true, are returned. False by default",
      access=ROOT),
    *OWNER_LIST_PARAMS,
], view=RESOURCEDETAIL, is_list=True, access=USER, since="4.2.0")
def list_resource_details(req, p):
    return lst(req, RESOURCEDETAIL, tags.list_details(req.s, req.ctx, list_query(req, p), resourcetype=p.resourcetype,
                                                      resourceid=p.resourceid, key=p.key, value=p.value,
                                                      fordisplay=p.fordisplay))

