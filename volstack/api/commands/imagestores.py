"""Image stores (secondary storage)."""
from volstack.api.commands.common import list_query, lst, obj
from volstack.api.registry import (API, BOOLEAN, LIST, LONG, MAP, STRING, UUID, Field as F, Lst, Obj, Param as P,
                                   Success, View)
from volstack.api.views import _a, _ref
from volstack.db import models as m
from volstack.services import imagestores, store_migration

IMAGESTORE_FIELDS = [
    F("id", "the ID of the image store", _a("uuid")),
    F("name", "the name of the image store", _a("name")),
    F("url", "the url of the image store", _a("url")),
    F("protocol", "the protocol of the image store", _a("protocol")),
    F("providername", "the provider name of the image store", _a("provider")),
    F("scope", "the scope of the image store", _a("scope")),
    F("readonly", "defines if store is read-only", _a("readonly"), "boolean"),
    F("zoneid", "the Zone ID of the image store", _ref(m.Zone, "zone_id")),
    F("zonename", "the Zone name of the image store", _ref(m.Zone, "zone_id", "name")),
    F("disksizetotal", "the total disk size of the host", _a("capacity_bytes"), "long"),
    F("disksizeused", "the host's currently used disk size", _a("used_bytes"), "long"),
]
IMAGESTORE = View("imagestore", IMAGESTORE_FIELDS)
SECONDARYSTORAGE = View("secondarystorage", IMAGESTORE_FIELDS)
DATASTOREOBJECT = View("datastoreobject", [
    F("name", "Name of the data store object.", lambda r, lk: r["name"]),
    F("isdirectory", "Is it a directory.", lambda r, lk: r["isdirectory"], "boolean"),
    F("size", "Size is in Bytes.", lambda r, lk: r.get("size"), "long"),
    F("lastupdated", "Last modified date of the file/directory.", lambda r, lk: r.get("lastupdated")),
    F("format", "Format of template associated with the data store object.", lambda r, lk: r.get("format")),
    F("templateid", "Template ID associated with the data store object.", lambda r, lk: r.get("templateid")),
    F("templatename", "Template Name associated with the data store object.", lambda r, lk: r.get("templatename")),
    F("snapshotid", "Snapshot ID associated with the data store object.", lambda r, lk: r.get("snapshotid")),
    F("snapshotname", "Snapshot Name associated with the data store object.", lambda r, lk: r.get("snapshotname")),
    F("volumeid", "Volume ID associated with the data store object.", lambda r, lk: r.get("volumeid")),
    F("volumename", "Volume Name associated with the data store object.", lambda r, lk: r.get("volumename")),
])


@API.command("addImageStore", "Adds backup image store.", [
    P("name", STRING, "the name for the image store"),
    P("provider", STRING, "the image store provider name: NFS, or Filesystem (a directory every host of the zone "
      "sees, file:///path)", required=True),
    P("url", STRING, "the URL for the image store: nfs://server/export or file:///path", length=2048),
    P("zoneid", UUID, "the Zone ID for the image store", entity="Zone"),
    P("details", MAP, "the details for the image store. Example: details[0].key=accesskey&details[0].value=s389ddssaa"),
], view=IMAGESTORE)
def add_image_store(req, p):
    if not p.url:
        from volstack.errors import InvalidParameter
        raise InvalidParameter("url is required for NFS and Filesystem image stores")
    details = {d["key"]: d["value"] for d in (p.details or {}).values() if isinstance(d, dict) and "key" in d}
    return obj(req, IMAGESTORE, imagestores.add_store(req.s, req.ctx, name=p.name, provider=p.provider, url=p.url,
                                                      zoneid=p.zoneid, details=details))


@API.command("addSecondaryStorage", "Adds secondary storage.", [
    P("url", STRING, "the URL for the secondary storage", required=True, length=2048),
    P("zoneid", UUID, "the Zone ID for the secondary storage", entity="Zone"),
], view=SECONDARYSTORAGE)
def add_secondary_storage(req, p):
    provider = "Filesystem" if p.url.lower().startswith("file:") else "NFS"
    return obj(req, SECONDARYSTORAGE, imagestores.add_store(req.s, req.ctx, provider=provider, url=p.url,
                                                            zoneid=p.zoneid))


@API.command("listImageStores", "Lists image stores.", [
    P("id", UUID, "the ID of the storage pool", entity="ImageStore"),
    P("name", STRING, "the name of the image store"),
    P("protocol", STRING, "the image store protocol"),
    P("provider", STRING, "the image store provider"),
    P("readonly", BOOLEAN, "read-only status of the image store"),
    P("zoneid", UUID, "the Zone ID for the image store", entity="Zone"),
], view=IMAGESTORE, is_list=True)
def list_image_stores(req, p):
    return lst(req, IMAGESTORE, imagestores.list_stores(req.s, req.ctx, list_query(req, p), id=p.id, name=p.name,
                                                        protocol=p.protocol, provider=p.provider,
                                                        readonly=p.readonly, zoneid=p.zoneid))


@API.command("updateImageStore", "Updates image store read-only status", [
    P("id", UUID, "Image Store UUID", required=True, entity="ImageStore"),
    P("name", STRING, "The new name for the Image Store."),
    P("readonly", BOOLEAN, "If set to true, it designates the corresponding image store to read-only, hence not "
      "considering them during storage migration"),
    P("capacitybytes", LONG, "The number of bytes CloudStack can use on this image storage."),
], view=IMAGESTORE)
def update_image_store(req, p):
    store = imagestores.get_store(req.s, p.id)
    return obj(req, IMAGESTORE, imagestores.update_store(req.s, req.ctx, store, name=p.name, readonly=p.readonly,
                                                         capacitybytes=p.capacitybytes))


@API.command("deleteImageStore", "Deletes an image store or Secondary Storage.", [
    P("id", UUID, "The image store ID or Secondary Storage ID.", required=True, entity="ImageStore"),
], response_key="success")
def delete_image_store(req, p):
    imagestores.delete_store(req.s, req.ctx, imagestores.get_store(req.s, p.id))
    return Success()


@API.command("listImageStoreObjects", "Lists objects at specified path on an image store.", [
    P("id", UUID, "id of the image store", required=True, entity="ImageStore"),
    P("path", STRING, "path to list on storage pool"),
], view=DATASTOREOBJECT, is_list=True)
def list_image_store_objects(req, p):
    rows = imagestores.list_objects(req.s, req.ctx, imagestores.get_store(req.s, p.id), p.path)
    q = list_query(req, p)
    size = len(rows) if q.pagesize in (None, -1) else q.pagesize
    page = (q.page or 1) - 1
    return Lst(DATASTOREOBJECT.key, [DATASTOREOBJECT.render(r, None) for r in rows[page * size:(page + 1) * size]],
               len(rows))


MIGRATION = View("imagestore", [
    F("migrationtype", "Type of migration requested for", lambda r, lk: r["migrationtype"]),
    F("success", "true if operation is executed successfully", lambda r, lk: r["success"], "boolean"),
    F("message", "Response message from migration of secondary storage data objects", lambda r, lk: r["message"]),
])


@API.command("migrateSecondaryStorageData", "migrates data objects from one secondary storage to destination image "
             "store(s)", [
    P("srcpool", UUID, "id of the image store from where the data is to be migrated", required=True, entity="ImageStore"),
    P("destpools", LIST, "id(s) of the destination secondary storage pool(s) to which the templates are to be migrated",
      required=True, entity="ImageStore"),
    P("migrationtype", STRING, "Balance: if you want data to be distributed evenly among the destination stores, "
      "Complete: If you want to migrate the entire data from source image store to the destination store(s). "
      "Default: Complete"),
], view=MIGRATION, is_async=True, instance_type="ImageStore", instance_param="srcpool")
def migrate_secondary_storage_data(req, p):
    src = imagestores.get_store(req.s, p.srcpool)
    dests = [imagestores.get_store(req.s, d) for d in p.destpools]
    return Obj(MIGRATION.key, MIGRATION.render(store_migration.migrate_data(req.s, req.ctx, src, dests, p.migrationtype,
                                                                            req.progress), None))


@API.command("migrateResourceToAnotherSecondaryStorage", "migrates resources from one secondary storage to destination "
             "image store", [
    P("srcpool", UUID, "id of the image store from where the data is to be migrated", required=True, entity="ImageStore"),
    P("destpool", UUID, "id of the destination secondary storage pool to which the resources are to be migrated",
      required=True, entity="ImageStore"),
    P("templates", LIST, "id(s) of the templates to be migrated", entity="Template"),
    P("snapshots", LIST, "id(s) of the snapshots to be migrated"),
], view=MIGRATION, is_async=True, instance_type="ImageStore", instance_param="srcpool")
def migrate_resource(req, p):
    src, dst = imagestores.get_store(req.s, p.srcpool), imagestores.get_store(req.s, p.destpool)
    return Obj(MIGRATION.key, MIGRATION.render(store_migration.migrate_resources(
        req.s, req.ctx, src, dst, p.templates or (), p.snapshots or (), req.progress), None))
