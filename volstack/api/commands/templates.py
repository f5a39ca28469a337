"""Templates and ISOs: register, list, update, permissions, delete, prepare, create from a volume, copy."""
from sqlalchemy import select

from volstack.api.commands.common import list_query, lst, obj
from volstack.api.registry import (API, BOOLEAN, LIST, MAP, OWNER, ROOT, STRING, USER, UUID, Field as F, Lst, Param as P,
                                   Success, View)
from volstack.api.views import Lookups, _a, _date, _domain_path_of, _ref, tags_field
from volstack.db import models as m
from volstack.db.image_models import ImageStore, TemplatePoolRef, TemplateStoreRef, TemplateZone
from volstack.db.storage_models import StoragePool
from volstack.services import catalog, template_cache, template_sources, templates


def _grouped(rows) -> dict:
    out: dict = {}
    for row in rows:
        out.setdefault(row[0].template_id, []).append(tuple(row))
    return out


def _store_refs(s, ids):
    return _grouped(s.execute(select(TemplateStoreRef, ImageStore).join(ImageStore, ImageStore.id == TemplateStoreRef.store_id)
                              .where(TemplateStoreRef.template_id.in_(ids), TemplateStoreRef.state != "Destroyed")
                              .order_by(TemplateStoreRef.id)))


def _pool_refs(s, ids):
    return _grouped(s.execute(select(TemplatePoolRef, StoragePool).join(StoragePool, StoragePool.id == TemplatePoolRef.pool_id)
                              .where(TemplatePoolRef.template_id.in_(ids)).order_by(TemplatePoolRef.id)))


def _first_zones(s, ids):
    out: dict = {}
    for tid, zid in s.execute(select(TemplateZone.template_id, TemplateZone.zone_id)
                              .where(TemplateZone.template_id.in_(ids)).order_by(TemplateZone.id)):
        out.setdefault(tid, zid)
    return out


def _refs(r, lk):
    return lk.batched(_store_refs, r.id) or []


def _zone_id(r, lk):
    if isinstance(r, templates.InZone):
        return r.listed_zone_id
    return lk.batched(_first_zones, r.id)


def _status(r, lk):
    if r.direct_download:
        if r.verify_state == "Checking":
            return f"Checking the checksum: {r.verify_pct}% read"
        return r.verify_error if r.verify_state == "Failed" else "Bypassed Secondary Storage"
    iso = r.format == "ISO"
    refs = _refs(r, lk)
    ready = [ref for ref, _ in refs if ref.download_state == "DOWNLOADED"]
    if ready:
        return "Successfully Installed" if iso else "Download Complete"
    for ref, _ in refs:
        if ref.download_state == "UPLOAD_IN_PROGRESS":
            return f"{ref.download_pct}% Uploaded"
        if ref.download_state == "NOT_UPLOADED":
            return "Not Uploaded"
        if ref.download_state == "DOWNLOAD_IN_PROGRESS":
            return ("Installing ISO" if iso else "Installing Template") if ref.download_pct >= 100 \
                else f"{ref.download_pct}% Downloaded"
    errors = [ref.error for ref, _ in refs if ref.error]
    return errors[0] if errors else "Processing"


def _download_details(r, lk):
    out = [{"datastore": st.name, "datastoreId": st.uuid, "datastoreRole": "Image",
            "downloadPercent": str(ref.download_pct), "downloadState": ref.download_state} for ref, st in _refs(r, lk)]
    for ref, pool in lk.batched(_pool_refs, r.id) or []:
        out.append({"datastore": pool.name, "datastoreId": pool.uuid, "datastoreRole": "Primary",
                    "downloadPercent": str(ref.download_pct), "downloadState": ref.download_state})
    return out or None


def _checksum(r, lk):
    return r.checksum.split("}", 1)[-1] if r.checksum else None


def _ostype(field):
    return lambda r, lk: (catalog.os_type(r.os_type, lk.s) or {}).get(field)


def _fields():
    return [
        F("id", "the template ID", _a("uuid")),
        F("name", "the template name", _a("name")),
        F("displaytext", "the template display text", _a("display_text")),
        F("isready", "true if the template is ready to be deployed from, false otherwise.",
          lambda r, lk: templates.is_ready(lk.s, r, getattr(r, "listed_zone_id", None), store_refs=_refs(r, lk)),
          "boolean"),
        F("status", "the status of the template", _status, access=OWNER),
        F("downloaddetails", "Lists the download progress of a template across all secondary storages",
          _download_details, "list"),
        F("size", "the size of the template", _a("size"), "long"),
        F("physicalsize", "the physical size of the template", _a("physical_size"), "long"),
        F("checksum", "checksum of the template", _checksum),
        F("format", "the format of the template.", _a("format")),
        F("hypervisor", "the hypervisor on which the template runs", _a("hypervisor")),
        F("directdownload", "KVM Only: true if template is directly downloaded to Primary Storage bypassing Secondary Storage",
          _a("direct_download"), "boolean"),
        F("url", "the URL which the template/iso is registered from", _a("url"), access=OWNER),
        F("zoneid", "the ID of the zone for this template", lambda r, lk: lk.attr(m.Zone, _zone_id(r, lk), "uuid")),
        F("zonename", "the name of the zone for this template", lambda r, lk: lk.attr(m.Zone, _zone_id(r, lk), "name")),
        F("crossZones", "true if the template is managed across all Zones, false otherwise", _a("cross_zones"), "boolean"),
        F("ispublic", "true if this template is a public template, false otherwise", _a("is_public"), "boolean"),
        F("isfeatured", "true if this template is a featured template, false otherwise", _a("featured"), "boolean"),
        F("isextractable", "true if the template is extractable, false otherwise", _a("extractable"), "boolean"),
        F("bootable", "true if the ISO is bootable, false otherwise", _a("bootable"), "boolean"),
        F("passwordenabled", "true if the reset password feature is enabled, false otherwise", _a("password_enabled"), "boolean"),
        F("requireshvm", "true if template requires HVM enabled, false otherwise", _a("requires_hvm"), "boolean"),
        F("ostypeid", "the ID of the OS type for this template.", _a("os_type")),
        F("ostypename", "the name of the OS type for this template.", _ostype("description")),
        F("templatetype", "the type of the template", _a("template_type")),
        F("sourcetemplateid", "the template ID of the parent template if present", lambda r, lk: None),
        F("created", "the date this template was created", _date("created"), "date"),
        F("removed", "the date this template was removed", _date("removed"), "date"),
        F("details", "additional key/value details tied with template", lambda r, lk: r.details or None, "map"),
        F("account", "the account name to which the template belongs", _ref(m.Account, "account_id", "name")),
        F("domainid", "the ID of the domain to which the template belongs", _ref(m.Domain, "domain_id")),
        F("domain", "the name of the domain to which the template belongs", _ref(m.Domain, "domain_id", "name")),
        F("domainpath", "the path of the domain to which the template belongs", _domain_path_of("domain_id")),
        tags_field("Template", "ISO"),
    ]


TEMPLATE = View("template", _fields())
ISO = View("iso", _fields())
PERMISSION = View("templatepermission", [
    F("id", "the template ID", lambda r, lk: r["id"]),
    F("ispublic", "true if this template is a public template, false otherwise", lambda r, lk: r["ispublic"], "boolean"),
    F("domainid", "the ID of the domain to which the template belongs", lambda r, lk: r["domainid"]),
    F("account", "the list of accounts the template is available for", lambda r, lk: r["account"], "list"),
])

REGISTER_COMMON = [
    P("name", STRING, "the name of the template", required=True),
    P("displaytext", STRING, "The display text of the template, defaults to 'name'.", length=4096),
    P("url", STRING, "the URL of where the template is hosted: http(s)://…, a .metalink file lists mirrors",
      required=True, length=2048),
    P("zoneid", UUID, "the ID of the zone the template is to be hosted on; -1: every zone (a cross-zone template)",
      entity="Zone", special=(templates.ALL_ZONES,)),
    P("checksum", STRING, "the checksum value of this template: {SHA-256}hex, {MD5}hex … or a bare MD5"),
    P("ostypeid", UUID, "the ID of the OS Type that best represents the OS of this template (see listOsTypes)"),
    P("ispublic", BOOLEAN, "true if the template is available to all accounts; default is true for admin and false for users"),
    P("isfeatured", BOOLEAN, "true if this template is a featured template, false otherwise", access=ROOT),
    P("isextractable", BOOLEAN, "true if the template or its derivatives are extractable; default is false"),
    P("directdownload", BOOLEAN, "true if template should bypass Secondary Storage and be downloaded to Primary Storage on deployment (KVM)"),
    P("passwordenabled", BOOLEAN, "true if the template supports the password reset feature; default is false"),
]


def _register(req, p, is_iso):
    t, refs = templates.register(req.s, req.ctx, name=p.name, url=p.url, format=p.format, zoneid=p.zoneid,
                                 zoneids=p.zoneids, displaytext=p.displaytext, hypervisor=p.hypervisor,
                                 ostypeid=p.ostypeid, checksum=p.checksum, ispublic=p.ispublic,
                                 isfeatured=p.isfeatured, isextractable=p.isextractable,
                                 passwordenabled=p.passwordenabled, requireshvm=p.requireshvm,
                                 directdownload=p.directdownload, bootable=p.bootable if p.bootable is not None else True,
                                 templatetype=p.templatetype, details=(p.details or {}).get("0"), is_iso=is_iso,
                                 imagestoreuuid=p.get("imagestoreuuid"))
    for ref in refs:
        req.start_task("templateDownload", {"ref": ref.id}, t.uuid)
    if t.verify_state == "Checking":
        req.start_task("templateVerify", {"template": t.id}, t.uuid)
    view = ISO if is_iso else TEMPLATE
    return Lst(view.key, [view.render(t, Lookups(req.s))], 1)


@API.command("registerTemplate", "Registers an existing template into the CloudStack cloud.", REGISTER_COMMON + [
    P("format", STRING, "the format for the template: QCOW2 or RAW (KVM)", required=True),
    P("hypervisor", STRING, "the target hypervisor for the template", required=True),
    P("zoneids", LIST, "A list of zone ids where the template will be hosted; -1 means all zones", entity="Zone",
      special=(templates.ALL_ZONES,)),
    P("requireshvm", BOOLEAN, "true if this template requires HVM"),
    P("templatetype", STRING, "the type of the template: USER (default); BUILTIN or SYSTEM for the root admin"),
    P("details", MAP, "Template details in key/value pairs; HTTP_HEADER:<Name> keys become download request headers"),
    P("bootable", BOOLEAN, "unused for templates"),
], view=TEMPLATE, is_list=False, access=USER)
def register_template(req, p):
    return _register(req, p, is_iso=False)


@API.command("registerIso", "Registers an existing ISO into the CloudStack Cloud.", REGISTER_COMMON + [
    P("bootable", BOOLEAN, "true if this ISO is bootable. If not passed explicitly its assumed to be true"),
    P("imagestoreuuid", STRING, "Image store UUID: the store of the zone that gets the ISO (default: the writable one "
      "with the most free space)"),
    P("format", STRING, "unused: ISOs are ISO"),
    P("hypervisor", STRING, "unused: ISOs serve every hypervisor"),
    P("zoneids", LIST, "A list of zone ids where the ISO will be hosted; -1 means all zones", entity="Zone",
      special=(templates.ALL_ZONES,)),
    P("requireshvm", BOOLEAN, "unused"),
    P("templatetype", STRING, "unused"),
    P("details", MAP, "unused"),
], view=ISO, access=USER)
def register_iso(req, p):
    return _register(req, p, is_iso=True)


@API.task("templateDownload", instance_type="Template", on_interrupt="retry")
def template_download(req, p):
    return templates.download_to_store(req.s, req.ctx, p["ref"], req.progress)


@API.task("templateVerify", instance_type="Template", on_interrupt="retry")
def template_verify(req, p):
    return templates.verify_source(req.s, req.ctx, p["template"], req.progress)


LIST_FILTERS = [
    P("id", UUID, "the template ID"),
    P("ids", LIST, "the IDs of the templates, mutually exclusive with id"),
    P("name", STRING, "the template name"),
    P("zoneid", UUID, "list templates by zoneid", entity="Zone"),
    P("hypervisor", STRING, "the hypervisor for which to restrict the search"),
    P("isready", BOOLEAN, "list templates that are ready to be deployed"),
    P("imagestoreid", UUID, "ID of the image or image cache store", entity="ImageStore", access=ROOT),
    P("storageid", UUID, "ID of the storage pool", entity="StoragePool", access=ROOT),
    P("tags", MAP, "List resources by tags (key/value pairs): tags[0].key=k&tags[0].value=v; any pair matches"),
    P("listall", BOOLEAN, "with self/selfexecutable, list the templates of every account the caller may see"),
    P("isrecursive", BOOLEAN, "with listall, include subdomains"),
    P("account", STRING, "list resources by account. Must be used with the domainId parameter."),
    P("domainid", UUID, "list only resources belonging to the domain specified", entity="Domain"),
]


def _list(req, p, is_iso, flt):
    return lst(req, ISO if is_iso else TEMPLATE, templates.list_templates(
        req.s, req.ctx, list_query(req, p), is_iso=is_iso, templatefilter=flt, id=p.id, ids=p.ids, name=p.name,
        zoneid=p.zoneid, hypervisor=p.hypervisor, isready=p.isready, imagestoreid=p.imagestoreid,
        storageid=p.storageid, templatetype=p.get("templatetype"), bootable=p.get("bootable"), tags=p.tags))


@API.command("listTemplates", "List all public, private, and privileged templates.", LIST_FILTERS + [
    P("templatefilter", STRING, "featured, self, selfexecutable, sharedexecutable, executable, community or all",
      required=True),
    P("templatetype", STRING, "the type of the template"),
], view=TEMPLATE, is_list=True, access=USER)
def list_templates(req, p):
    return _list(req, p, False, p.templatefilter)


@API.command("listIsos", "Lists all available ISO files.", LIST_FILTERS + [
    P("isofilter", STRING, "featured, self, selfexecutable, sharedexecutable, executable, community or all; "
      "default selfexecutable"),
    P("bootable", BOOLEAN, "list only bootable ISOs (true) or only data ISOs (false)"),
], view=ISO, is_list=True, access=USER)
def list_isos(req, p):
    return _list(req, p, True, p.isofilter or "selfexecutable")


UPDATE_PARAMS = [
    P("name", STRING, "the name of the image file"),
    P("displaytext", STRING, "the display text of the image", length=4096),
    P("ostypeid", UUID, "the ID of the OS type that best represents the OS of this image."),
    P("passwordenabled", BOOLEAN, "true if the image supports the password reset feature; default is false"),
    P("bootable", BOOLEAN, "true if image is bootable, false otherwise"),
    P("requireshvm", BOOLEAN, "true if the template requires HVM, false otherwise"),
    P("isextractable", BOOLEAN, "true if the template or its derivatives are extractable"),
    P("details", MAP, "Details in key/value pairs using format details[i].keyname=keyvalue."),
    P("cleanupdetails", BOOLEAN, "optional boolean field, which indicates if details should be cleaned up or not"),
]


def _update(req, p, is_iso):
    t = templates.update(req.s, req.ctx, templates.get_template(req.s, req.ctx, p.id, is_iso), name=p.name,
                         displaytext=p.displaytext, format=p.get("format"), ostypeid=p.ostypeid,
                         passwordenabled=p.passwordenabled, bootable=p.bootable, requireshvm=p.requireshvm,
                         isextractable=p.isextractable, templatetype=p.get("templatetype"),
                         details=(p.details or {}).get("0"), cleanupdetails=p.cleanupdetails)
    return obj(req, ISO if is_iso else TEMPLATE, t)


@API.command("updateTemplate", "Updates attributes of a template.", [
    P("id", UUID, "the ID of the image file", required=True, entity="Template"), *UPDATE_PARAMS,
    P("format", STRING, "the format for the image"),
    P("templatetype", STRING, "the type of the template. Valid options are: USER/SYSTEM/ROUTING/BUILTIN", access=ROOT),
], view=TEMPLATE, access=USER)
def update_template(req, p):
    return _update(req, p, False)


@API.command("updateIso", "Updates an ISO file.", [
    P("id", UUID, "the ID of the image file", required=True, entity="Template"), *UPDATE_PARAMS,
], view=ISO, access=USER)
def update_iso(req, p):
    return _update(req, p, True)


PERMISSION_PARAMS = [
    P("accounts", LIST, "a comma delimited list of accounts within caller's domain. If specified, \"op\" parameter has to be passed in."),
    P("op", STRING, "permission operator (add, remove, reset)"),
    P("ispublic", BOOLEAN, "true for public template/iso, false for private templates/isos"),
    P("isfeatured", BOOLEAN, "true for featured template/iso, false otherwise", access=ROOT),
    P("isextractable", BOOLEAN, "true if the template/iso is extractable, false other wise. Can be set only by root admin"),
    P("projectids", LIST, "projects to permit (volstack has no projects yet: every id is refused)", entity="Project"),
]


def _permissions(req, p, is_iso):
    t = templates.get_template(req.s, req.ctx, p.id, is_iso)
    templates.update_permissions(req.s, req.ctx, t, accounts_=p.accounts, op=p.op, ispublic=p.ispublic,
                                 isfeatured=p.isfeatured, isextractable=p.isextractable)
    return Success()


@API.command("updateTemplatePermissions", "Updates a template visibility permissions. A public template is visible "
             "to all accounts within the same domain. A private template is visible only to the owner of the template. "
             "A privileged template is a private template with account permissions added. Only accounts specified "
             "under the template permissions are visible to them.", [
    P("id", UUID, "the template ID", required=True, entity="Template"), *PERMISSION_PARAMS,
], response_key="success", access=USER)
def update_template_permissions(req, p):
    return _permissions(req, p, False)


@API.command("updateIsoPermissions", "Updates ISO permissions", [
    P("id", UUID, "the template ID", required=True, entity="Template"), *PERMISSION_PARAMS,
], response_key="success", access=USER)
def update_iso_permissions(req, p):
    return _permissions(req, p, True)


def _list_permissions(req, p, is_iso):
    t = templates.get_template(req.s, req.ctx, p.id, is_iso)
    row = {"id": t.uuid, "ispublic": t.is_public, "domainid": Lookups(req.s).attr(m.Domain, t.domain_id, "uuid"),
           "account": templates.permitted_accounts(req.s, t)}
    return Lst(PERMISSION.key, [PERMISSION.render(row, None)], 1)


@API.command("listTemplatePermissions", "List template visibility and all accounts that have permissions to view this template.",
             [P("id", UUID, "the template ID", required=True, entity="Template")], view=PERMISSION, is_list=True, access=USER)
def list_template_permissions(req, p):
    return _list_permissions(req, p, False)


@API.command("listIsoPermissions", "List iso visibility and all accounts that have permissions to view this iso.",
             [P("id", UUID, "the template ID", required=True, entity="Template")], view=PERMISSION, is_list=True, access=USER)
def list_iso_permissions(req, p):
    return _list_permissions(req, p, True)


def _delete(req, p, is_iso):
    t = templates.get_template(req.s, req.ctx, p.id, is_iso)
    for ref_id in templates.delete(req.s, req.ctx, t, forced=bool(p.get("forced")), zoneid=p.zoneid):
        req.s.commit()       # the template is gone for users even if a store cannot be reached right now
        templates.delete_store_copy(req.s, ref_id)
    return Success()


@API.command("deleteTemplate", "Deletes a template from the system. All virtual machines using the deleted template "
             "will not be affected.", [
    P("id", UUID, "the ID of the template", required=True, entity="Template"),
    P("zoneid", UUID, "the ID of zone of the template", entity="Zone"),
    P("forced", BOOLEAN, "Force delete a template even if it is used by virtual machines"),
    P("issystem", BOOLEAN, "Necessary if the template's type is system."),
], response_key="success", is_async=True, access=USER, instance_type="Template", instance_param="id")
def delete_template(req, p):
    return _delete(req, p, False)


@API.command("deleteIso", "Deletes an ISO file.", [
    P("id", UUID, "the ID of the ISO file", required=True, entity="Template"),
    P("zoneid", UUID, "the ID of the zone of the ISO file. If not specified, the ISO will be deleted from all the zones",
      entity="Zone"),
], response_key="success", is_async=True, access=USER, instance_type="Template", instance_param="id")
def delete_iso(req, p):
    return _delete(req, p, True)


@API.command("prepareTemplate", "load template into primary storage", [
    P("templateid", UUID, "template ID of the template to be prepared in primary storage(s).", required=True, entity="Template"),
    P("zoneid", UUID, "zone ID of the template to be prepared in primary storage(s).", required=True, entity="Zone"),
    P("storageid", UUID, "storage pool ID of the primary storage pool to which the template should be prepared. If "
      "it is not provided the template is prepared on all the available primary storage pools.", entity="StoragePool"),
], view=TEMPLATE, access=ROOT)
def prepare_template(req, p):
    t = templates.get_template(req.s, req.ctx, p.templateid)
    req.start_task("templatePrepare", {"template": t.uuid, "zoneid": p.zoneid, "storageid": p.storageid}, t.uuid)
    return Lst(TEMPLATE.key, [TEMPLATE.render(t, Lookups(req.s))], 1)


@API.task("templatePrepare", instance_type="Template", on_interrupt="retry")
def template_prepare(req, p):
    from volstack.services import infra
    from volstack.services.pools import get_pool
    t = templates.get_template(req.s, req.ctx, p["template"])
    zone = infra.get_zone(req.s, p["zoneid"])
    pool = get_pool(req.s, p["storageid"]) if p.get("storageid") else None
    return {"pools": len(template_cache.prepare(req.s, req.ctx, t, zone.id, pool, req.progress))}



@API.command("createTemplate", "Creates a template of a virtual machine. The virtual machine must be in a STOPPED state. "
             "A template created from this command is automatically designated as a private template visible to the "
             "account that created it.", [
    P("name", STRING, "the name of the template", required=True),
    P("displaytext", STRING, "The display text of the template, defaults to the 'name'.", length=4096),
    P("ostypeid", UUID, "the ID of the OS Type that best represents the OS of this template."),
    P("volumeid", UUID, "the ID of the disk volume the template is being created from", entity="Volume"),
    P("snapshotid", UUID, "the ID of the snapshot the template is being created from", entity="Snapshot"),
    P("virtualmachineid", UUID, "Optional, VM ID: the VM's ROOT volume", entity="VirtualMachine"),
    P("ispublic", BOOLEAN, "true if this template is a public template, false otherwise"),
    P("isfeatured", BOOLEAN, "true if this template is a featured template, false otherwise", access=ROOT),
    P("passwordenabled", BOOLEAN, "true if the template supports the password reset feature; default is false"),
    P("requireshvm", BOOLEAN, "true if the template requires HVM, false otherwise"),
    P("isdynamicallyscalable", BOOLEAN, "true if template contains XS/VMWare tools inorder to support dynamic scaling"),
    P("details", MAP, "Template details in key/value pairs using format details[i].keyname=keyvalue."),
    P("zoneid", UUID, "the zone for the template (the volume's zone)", entity="Zone"),
], view=TEMPLATE, is_async=True, access=USER, instance_type="Template", instance_param="id",
   prepare=lambda req, p: _create_template_row(req, p).uuid)
def create_template(req, p):
    t = templates.get_template(req.s, req.ctx, p.id)
    if t.source_snapshot_id is not None:
        from volstack.services import snapshot_templates
        return obj(req, TEMPLATE, snapshot_templates.copy_to_store(req.s, req.ctx, t, req.progress))
    return obj(req, TEMPLATE, template_sources.copy_volume_to_store(req.s, req.ctx, t, req.progress))


def _source_zone_only(req, p, zone_id):
    """The template is made in its source's zone; a zoneid naming another would be ignored, so it is refused."""
    from volstack.errors import InvalidParameter
    from volstack.services import infra
    if p.zoneid and infra.get_zone(req.s, p.zoneid).id != zone_id:
        raise InvalidParameter("zoneid: a template created from a volume or snapshot is made in the zone of that "
                               "volume or snapshot; omit zoneid or pass that zone")
    if p.isdynamicallyscalable:
        raise InvalidParameter("isdynamicallyscalable=true is not supported: volstack scales no running VM's CPU or "
                               "memory; omit it")


def _create_template_row(req, p):
    from volstack.errors import InvalidParameter
    from volstack.services import vms, volumes
    if p.snapshotid:
        from volstack.services import snapshot_templates, snapshots
        if p.volumeid or p.virtualmachineid:
            raise InvalidParameter("Pass either snapshotid or volumeid (virtualmachineid), not both")
        snap = snapshots.get_snapshot(req.s, req.ctx, p.snapshotid)
        _source_zone_only(req, p, snap.zone_id)
        return snapshot_templates.create_row(
            req.s, req.ctx, snap, name=p.name,
            displaytext=p.displaytext, ostypeid=p.ostypeid, ispublic=p.ispublic, isfeatured=p.isfeatured,
            passwordenabled=p.passwordenabled, requireshvm=p.requireshvm, details=(p.details or {}).get("0"))
    if p.volumeid:
        vol = volumes.get_volume(req.s, req.ctx, p.volumeid)
    elif p.virtualmachineid:
        vm = vms.get_vm(req.s, req.ctx, p.virtualmachineid)
        vol = volumes.root_of(req.s, vm)
    else:
        raise InvalidParameter("Pass volumeid (or virtualmachineid) to create a template")
    _source_zone_only(req, p, vol.zone_id)
    return template_sources.create_from_volume(req.s, req.ctx, name=p.name, volume=vol, displaytext=p.displaytext,
                                        ostypeid=p.ostypeid, ispublic=p.ispublic, isfeatured=p.isfeatured,
                                        passwordenabled=p.passwordenabled, requireshvm=p.requireshvm,
                                        details=(p.details or {}).get("0"))


def _copy(req, p, is_iso):
    from volstack.errors import InvalidParameter
    from volstack.services import infra
    t = templates.get_template(req.s, req.ctx, p.id, is_iso)
    dest = list(p.destzoneids or []) + ([p.destzoneid] if p.destzoneid else [])
    if not dest:
        raise InvalidParameter("Pass destzoneid or destzoneids")
    src = infra.get_zone(req.s, p.sourcezoneid).id if p.sourcezoneid else None
    t = template_sources.copy_to_zones(req.s, req.ctx, t, src, [infra.get_zone(req.s, z).id for z in dest], req.progress)
    return obj(req, ISO if is_iso else TEMPLATE, t)


COPY_PARAMS = [
    P("sourcezoneid", UUID, "ID of the zone the template is currently hosted on. If not specified and template is "
      "cross-zone, then we will sync this template to region wide image store.", entity="Zone"),
    P("destzoneid", UUID, "ID of the zone the template is being copied to.", entity="Zone"),
    P("destzoneids", LIST, "A list of IDs of the zones that the template/ISO should be copied to.", entity="Zone"),
]


@API.command("copyTemplate", "Copies a template from one zone to another.", [
    P("id", UUID, "Template ID.", required=True, entity="Template"), *COPY_PARAMS,
], view=TEMPLATE, is_async=True, access=USER, instance_type="Template", instance_param="id")
def copy_template(req, p):
    return _copy(req, p, False)


@API.command("copyIso", "Copies an iso from one zone to another.", [
    P("id", UUID, "Template ID.", required=True, entity="Template"), *COPY_PARAMS,
], view=ISO, is_async=True, access=USER, instance_type="Template", instance_param="id")
def copy_iso(req, p):
    return _copy(req, p, True)
