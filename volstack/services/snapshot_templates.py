"""createTemplate snapshotid=: a template whose image is a copy of a snapshot's backup, made store to store on a
zone host (the backup is already a flat qcow2, so the copy is one qemu-img convert), or of a snapshot kept on a
file pool, copied from there by a host of the pool."""

from volstack.db.image_models import ImageStore, Template, TemplateStoreRef, TemplateZone
from volstack.db.snapshot_models import Snapshot
from volstack.drivers.hosts import channel, run_long
from volstack.errors import InvalidParameter, PermissionDenied, ResourceUnavailable
from volstack.services import (catalog, encryption, events, imagestores, limits, snapshot_primary, snapshots_rbd,
                               template_sources, templates)


def create_row(s, ctx, snap: Snapshot, *, name, displaytext=None, ostypeid=None, ispublic=False, isfeatured=False,
               passwordenabled=False, requireshvm=True, details=None) -> Template:
    """The template row and its store copy (Allocated); the job copies the snapshot's backup."""
    if snap.state != "BackedUp" or (snap.store_id is None and not snapshot_primary.kept(snap)):
        raise InvalidParameter(f"Snapshot {snap.name} is {snap.state}; templates are made from backed-up snapshots")
    snapshot_primary.check_template_source(snap)
    encryption.refuse_template(snap)
    if ostypeid is not None and catalog.os_type(ostypeid, s) is None:
        raise InvalidParameter(f"Unable to find OS type by id {ostypeid}: see listOsTypes")
    if (ispublic or isfeatured) and not ctx.is_admin and not templates._users_may_publish(s, ctx):
        raise PermissionDenied("Only administrators may create public or featured templates here")
    stores = imagestores.writable_stores(s, snap.zone_id)
    if not stores:
        raise ResourceUnavailable("No writable image store in the snapshot's zone: add one with addImageStore or "
                                  "clear readonly on an existing one")
    limits.check_limit(s, ctx.account_id, "template")
    t = Template(name=name, display_text=displaytext or name, format="QCOW2", hypervisor=snap.hypervisor,
                 os_type=ostypeid or catalog.os_type_id("Other Linux (64-bit)"), is_public=bool(ispublic),
                 featured=bool(isfeatured), password_enabled=bool(passwordenabled), requires_hvm=bool(requireshvm),
                 source_snapshot_id=snap.id, account_id=ctx.account_id, domain_id=ctx.domain_id,
                 details=dict(details or {}), size=snap.size)
    s.add(t)
    s.flush()
    s.add(TemplateZone(template_id=t.id, zone_id=snap.zone_id))
    s.add(TemplateStoreRef(template_id=t.id, store_id=stores[0].id, install_path=templates.object_name(t)))
    events.record(s, ctx, "TEMPLATE.CREATE", f"Template {name} being created from snapshot {snap.name}",
                  resource_type="Template", resource_uuid=t.uuid)
    return t


def copy_to_store(s, ctx, t: Template, progress=None) -> Template:
    """The createTemplate job for a snapshot source."""
    snap = s.get(Snapshot, t.source_snapshot_id)
    src = s.get(ImageStore, snap.store_id) if snap.store_id else None

    def copy(ref, dst, report):
        if snap.state != "BackedUp":
            raise InvalidParameter(f"Snapshot {snap.name} became {snap.state} before its template was made")
        if src is None:                     # kept on primary
            return snapshot_primary.copy_to_store(s, snap, imagestores.spec(dst), ref.install_path, report)
        if snapshots_rbd.owns(snap):        # an RBD backup chain, not a flat qcow2
            return snapshots_rbd.copy_to_store(s, snap, dst, ref.install_path, report)
        ch = channel(imagestores.host_for(s, dst))
        s.commit()                          # the host lookup began a transaction: none stays open across the copy
        return run_long(ch, "volume_copy", report, src_pool=imagestores.spec(src),
                        src_name=snap.install_path, src_format="qcow2", dst_pool=imagestores.spec(dst),
                        dst_name=ref.install_path, format="qcow2")
    return template_sources.fill_store_copy(s, ctx, t, f"snapshot {snap.name}", copy, progress)
