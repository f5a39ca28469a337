"""Templates whose bytes come from elsewhere than a download: a volume (createTemplate), another zone's
image store (copyTemplate), or a file on the hosts (volstack up's built-in template). Each fills a store
copy of the template with an agent's volume_copy; `fill_store_copy` settles the copy either way."""
from sqlalchemy import select

from volstack.db.image_models import ImageStore, Template, TemplateStoreRef, TemplateZone
from volstack.db.models import Zone, utcnow
from volstack.db.storage_models import VirtualMachine
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InvalidParameter, PermissionDenied, ResourceUnavailable
from volstack.services import catalog, encryption, events, imagestores, limits
from volstack.services.context import check_access
from volstack.services.templates import FORMATS, _users_may_publish, is_ready, object_name, ready_in_zone


# ---------------------------------------------------------------- createTemplate from a volume

def create_from_volume(s, ctx, *, name, volume, displaytext=None, ostypeid=None, ispublic=False, isfeatured=False,
                       passwordenabled=False, requireshvm=True, isextractable=False, details=None) -> Template:
    """The template row and its store copy (Allocated); the job copies the volume's image into the store."""
    from volstack.db.storage_models import StoragePool
    if volume.state != "Ready" or volume.pool_id is None:
        raise InvalidParameter(f"Volume {volume.name} is {volume.state}; a template is made from a Ready volume")
    encryption.refuse_template(volume)
    vm = s.get(VirtualMachine, volume.vm_id) if volume.vm_id else None
    if vm is not None and vm.state != "Stopped":
        raise InvalidParameter(f"Volume {volume.name} is attached to VM {vm.name}, which is {vm.state}; stop the VM "
                               "before creating a template from its volume")
    if ostypeid is not None and catalog.os_type(ostypeid, s) is None:
        raise InvalidParameter(f"Unable to find OS type by id {ostypeid}: see listOsTypes")
    if (ispublic or isfeatured) and not ctx.is_admin and not _users_may_publish(s, ctx):
        raise PermissionDenied("Only administrators may create public or featured templates here")
    pool = s.get(StoragePool, volume.pool_id)
    stores = imagestores.writable_stores(s, pool.zone_id)
    if not stores:
        raise ResourceUnavailable("No writable image store in the volume's zone: add one with addImageStore or clear "
                                  "readonly on an existing one")
    limits.check_limit(s, ctx.account_id, "template")
    limits.check_limit(s, ctx.account_id, "secondary_storage", volume.size)
    src = s.get(Template, volume.template_id) if volume.template_id else None
    t = Template(name=name, display_text=displaytext or name, format="QCOW2", hypervisor=volume.hypervisor or "KVM",
                 os_type=ostypeid or (src.os_type if src else catalog.os_type_id("Other Linux (64-bit)")),
                 is_public=bool(ispublic), featured=bool(isfeatured), password_enabled=bool(passwordenabled),
                 requires_hvm=bool(requireshvm), extractable=bool(isextractable), source_volume_id=volume.id,
                 account_id=ctx.account_id, domain_id=ctx.domain_id, details=dict(details or {}), size=volume.size)
    s.add(t)
    s.flush()
    s.add(TemplateZone(template_id=t.id, zone_id=pool.zone_id))
    s.add(TemplateStoreRef(template_id=t.id, store_id=stores[0].id, install_path=object_name(t)))
    events.record(s, ctx, "TEMPLATE.CREATE", f"Template {name} being created from volume {volume.name}",
                  resource_type="Template", resource_uuid=t.uuid)
    return t


def copy_volume_to_store(s, ctx, t: Template, progress=None) -> Template:
    """The createTemplate job: qemu-img convert from the volume's pool into the store (a flat qcow2)."""
    from volstack.db.storage_models import StoragePool, Volume
    from volstack.drivers import driver_for
    from volstack.services.pools import hosts_in_scope
    vol = s.get(Volume, t.source_volume_id)
    pool = s.get(StoragePool, vol.pool_id)

    def copy(ref, store, report):
        hosts = hosts_in_scope(s, pool)
        if not hosts:
            raise ResourceUnavailable(f"No Up host reaches storage pool {pool.name} to read volume {vol.name}")
        ch = channel(hosts[0])
        s.commit()
        return run_long(ch, "volume_copy", report, src_pool=driver_for(pool.provider).spec(pool),
                        src_name=vol.path, src_format=vol.format.lower(), dst_pool=imagestores.spec(store),
                        dst_name=ref.install_path, format="qcow2")
    return fill_store_copy(s, ctx, t, f"volume {vol.name}", copy, progress)


def fill_store_copy(s, ctx, t: Template, source: str, copy, progress=None) -> Template:
    """A template's store copy made by copy(ref, store, report) -> agent result; the copy ends Ready, or
    Failed with the reason and the template removed (createTemplate from a volume or a snapshot)."""
    ref = s.scalar(select(TemplateStoreRef).where(TemplateStoreRef.template_id == t.id))
    store = s.get(ImageStore, ref.store_id)
    ref.state, ref.download_state = "Creating", "DOWNLOAD_IN_PROGRESS"
    s.commit()

    def report(pct):
        ref.download_pct = int(pct)
        progress(int(pct)) if progress else s.commit()
    try:
        res = copy(ref, store, report)
    except CloudError as exc:
        ref.state, ref.download_state, ref.error = "Failed", "DOWNLOAD_ERROR", exc.text
        t.removed, t.state = utcnow(), "Inactive"
        events.record(s, ctx, "TEMPLATE.CREATE", f"Creating template {t.name} from {source} failed: {exc.text}",
                      level="ERROR", resource_type="Template", resource_uuid=t.uuid)
        s.commit()
        raise
    ref.state, ref.download_state, ref.download_pct = "Ready", "DOWNLOADED", 100
    ref.size, ref.physical_size = res["size"], res.get("physical_size")
    t.size, t.physical_size = res["size"], res.get("physical_size")
    events.record(s, ctx, "TEMPLATE.CREATE", f"Template {t.name} created from {source}", resource_type="Template",
                  resource_uuid=t.uuid)
    return t


# ---------------------------------------------------------------- copyTemplate

def copy_to_zones(s, ctx, t: Template, source_zone_id: int | None, dest_zone_ids: list[int], progress=None) -> Template:
    """copyTemplate: copy the template from a store of the source zone to a writable store of each
    destination zone (store to store through a host of the destination zone)."""
    check_access(s, ctx, t.account_id, "template")
    if t.direct_download:
        raise InvalidParameter(f"Template {t.name} is downloaded directly to primary storage; register it in the "
                               "other zone instead of copying it")
    src_ref = None
    for zone_id in ([source_zone_id] if source_zone_id else
                    list(s.scalars(select(TemplateZone.zone_id).where(TemplateZone.template_id == t.id)))):
        src_ref = ready_in_zone(s, t, zone_id)
        if src_ref:
            break
    if src_ref is None:
        raise InvalidParameter(f"Template {t.name} is not ready in the source zone")
    src_store = s.get(ImageStore, src_ref.store_id)
    for i, zone_id in enumerate(dest_zone_ids):
        if ready_in_zone(s, t, zone_id):
            continue
        stores = imagestores.writable_stores(s, zone_id)
        if not stores:
            raise ResourceUnavailable("No writable image store in the destination zone")
        ref = s.scalar(select(TemplateStoreRef).where(TemplateStoreRef.template_id == t.id,
                                                      TemplateStoreRef.store_id == stores[0].id))
        if ref is None:
            ref = TemplateStoreRef(template_id=t.id, store_id=stores[0].id, install_path=src_ref.install_path)
            s.add(ref)
        ref.state, ref.download_state, ref.error = "Creating", "DOWNLOAD_IN_PROGRESS", None
        if not s.scalar(select(TemplateZone.id).where(TemplateZone.template_id == t.id, TemplateZone.zone_id == zone_id)):
            s.add(TemplateZone(template_id=t.id, zone_id=zone_id))
        s.commit()
        fmt = {"QCOW2": "qcow2"}.get(t.format, "raw")
        try:
            host = imagestores.host_for(s, stores[0])
            res = run_long(channel(host), "volume_copy", None, src_pool=imagestores.spec(src_store),
                           src_name=src_ref.install_path, src_format=fmt, dst_pool=imagestores.spec(stores[0]),
                           dst_name=ref.install_path, format=fmt)
        except CloudError as exc:
            ref.state, ref.download_state, ref.error = "Failed", "DOWNLOAD_ERROR", exc.text
            s.commit()
            raise
        ref.state, ref.download_state, ref.download_pct = "Ready", "DOWNLOADED", 100
        ref.size, ref.physical_size = res["size"], res.get("physical_size")
        events.record(s, ctx, "TEMPLATE.COPY", f"Template {t.name} copied to zone {s.get(Zone, zone_id).name}",
                      resource_type="Template", resource_uuid=t.uuid)
        if progress:
            progress(int(100 * (i + 1) / len(dest_zone_ids)))
    return t


# ---------------------------------------------------------------- templates from a host-local file

def install_local(s, ctx, *, name, path: str, zone, fmt="QCOW2", ostype="Other Linux (64-bit)", template_type="BUILTIN",
                  public=True, featured=True, displaytext=None) -> tuple[Template, bool]:
    """A template whose image is a file on the zone's hosts (volstack up's built-in template): a host agent
    copies it into an image store. Returns (template, created); an existing Ready one is kept."""
    import os
    have = s.scalar(select(Template).where(Template.name == name, Template.template_type == template_type,
                                           Template.removed.is_(None)))
    if have is not None and is_ready(s, have, zone.id):
        return have, False
    stores = imagestores.writable_stores(s, zone.id)
    if not stores:
        raise ResourceUnavailable(f"No writable image store in zone {zone.name} for template {name}")
    t = have or Template(name=name, display_text=displaytext or name, format=fmt.upper(), hypervisor="KVM",
                         os_type=catalog.os_type_id(ostype), url=f"file://{path}", is_public=public, featured=featured,
                         template_type=template_type, account_id=ctx.account_id, domain_id=ctx.domain_id)
    if have is None:
        s.add(t)
        s.flush()
        s.add(TemplateZone(template_id=t.id, zone_id=zone.id))
    ref = s.scalar(select(TemplateStoreRef).where(TemplateStoreRef.template_id == t.id)) or \
        TemplateStoreRef(template_id=t.id, store_id=stores[0].id, install_path=object_name(t))
    s.add(ref)
    s.flush()
    src = {"uuid": f"local-{t.uuid}", "type": "Filesystem", "path": os.path.dirname(path)}
    res = channel(imagestores.host_for(s, stores[0])).call(
        "volume_copy", src_pool=src, src_name=os.path.basename(path), src_format=FORMATS[t.format],
        dst_pool=imagestores.spec(stores[0]), dst_name=ref.install_path, format=FORMATS[t.format])
    ref.state, ref.download_state, ref.download_pct = "Ready", "DOWNLOADED", 100
    ref.size = t.size = res["size"]
    ref.physical_size = t.physical_size = res.get("physical_size")
    events.record(s, ctx, "TEMPLATE.CREATE", f"Template {name} installed from {path}", resource_type="Template",
                  resource_uuid=t.uuid)
    return t, True
