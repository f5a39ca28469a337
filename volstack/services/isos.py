"""ISOs in guests: attachIso / detachIso, the ISO a VM starts with, and where the host reads it from.

A VM holds at most one ISO (vm_instance.iso_id, as in CloudStack; a VM deployed from an ISO starts with it
attached). The ISO reaches the host as a template does: one cached copy per primary pool
(template_spool_ref, raw), copied once from the zone's image store, or fetched straight into the pool for
a direct-download ISO (template_cache.seed). vm_instance.iso_pool_id records the copy the VM uses, so the
storage cleanup keeps that copy for as long as the ISO stays attached.

A running guest gets the ISO in its CD drive at once (agent `cdrom_insert`, the drive every guest has);
a stopped VM only records it and starts with it. The copy is put on a shared pool the host reaches when
there is one (preferring the one the VM used before, then its ROOT volume's pool), so a live migration
finds the same ISO on the destination.
"""
from sqlalchemy import select

from volstack.db.image_models import Template
from volstack.db.models import Host, Zone
from volstack.db.storage_models import StoragePool, StoragePoolHost, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel
from volstack.errors import InvalidParameter, ResourceUnavailable
from volstack.services import events, templates

CHANGEABLE = ("Running", "Stopped")
# A VM in these states no longer holds its ISO (CloudStack's listActiveByIsoId leaves them out).
NOT_HOLDING = ("Error", "Expunging", "Expunged")


def _changeable(vm: VirtualMachine, what: str) -> None:
    if vm.state not in CHANGEABLE:
        raise InvalidParameter(f"VM {vm.name} is {vm.state}; {what} an ISO when the VM is Running or Stopped")


def attach(s, ctx, vm: VirtualMachine, iso: Template, forced: bool = False, progress=None) -> VirtualMachine:
    _changeable(vm, "attach")
    if vm.iso_id is not None and not forced:
        have = s.get(Template, vm.iso_id)
        raise InvalidParameter(f"VM {vm.name} already has ISO {have.name if have else vm.iso_id} attached and a VM "
                               "holds one ISO: detach it first (detachIso), or pass forced=true to replace it")
    if not templates.usable_by(s, iso, vm.account_id):       # an admin attaching to someone's VM: the owner needs the ISO too
        raise InvalidParameter(f"The owner of VM {vm.name} may not use ISO {iso.name} (private, not shared with "
                               "that account)")
    templates.check_ready(s, iso, s.get(Zone, vm.zone_id))
    pool_id = None
    if vm.state == "Running":
        host = s.get(Host, vm.host_id)
        medium, pool = _medium(s, ctx, vm, iso, host, progress)
        channel(host).call("cdrom_insert", vm=vm.uuid, medium=medium)
        pool_id = pool.id
    vm.iso_id, vm.iso_pool_id = iso.id, pool_id
    events.record(s, ctx, "ISO.ATTACH", f"ISO {iso.name} attached to VM {vm.name}", resource_type="VirtualMachine",
                  resource_uuid=vm.uuid)
    return vm


def detach(s, ctx, vm: VirtualMachine) -> VirtualMachine:
    if vm.iso_id is None:
        raise InvalidParameter(f"VM {vm.name} has no ISO attached")
    _changeable(vm, "detach")
    if vm.state == "Running":
        channel(s.get(Host, vm.host_id)).call("cdrom_eject", vm=vm.uuid)
    iso = s.get(Template, vm.iso_id)
    vm.iso_id = vm.iso_pool_id = None
    events.record(s, ctx, "ISO.DETACH", f"ISO {iso.name if iso else ''} detached from VM {vm.name}",
                  resource_type="VirtualMachine", resource_uuid=vm.uuid)
    return vm


def medium_at_start(s, ctx, vm: VirtualMachine, host: Host, progress=None) -> dict | None:
    """What goes in the CD drive when the VM starts on host (None: empty), its copy seeded if need be."""
    if vm.iso_id is None:
        return None
    iso = s.get(Template, vm.iso_id)
    try:
        templates.check_ready(s, iso, s.get(Zone, vm.zone_id))
    except InvalidParameter as exc:
        raise InvalidParameter(f"{exc.text} (it is attached to VM {vm.name}: detach it to start without)") from None
    medium, pool = _medium(s, ctx, vm, iso, host, progress)
    vm.iso_pool_id = pool.id
    return medium


def _medium(s, ctx, vm, iso, host, progress) -> tuple[dict, StoragePool]:
    from volstack.services import template_cache
    pool = _pool_for(s, vm, iso, host)
    ref = template_cache.seed(s, ctx, iso, pool, host, progress)
    return {"pool": driver_for(pool.provider).spec(pool), "name": ref.install_path}, pool


def _pool_for(s, vm, iso, host) -> StoragePool:
    reached = set(s.scalars(select(StoragePoolHost.pool_id).where(StoragePoolHost.host_id == host.id)))
    pools = [p for p in s.scalars(select(StoragePool).where(StoragePool.zone_id == vm.zone_id,
                                                            StoragePool.state == "Up").order_by(StoragePool.id))
             if p.id in reached]
    if not pools:
        raise ResourceUnavailable(f"Host {host.name} has no Up storage pool connected to hold ISO {iso.name} for "
                                  f"VM {vm.name}")
    root_pool = s.scalar(select(Volume.pool_id).where(Volume.vm_id == vm.id, Volume.volume_type == "ROOT",
                                                      Volume.removed.is_(None)))
    return min(pools, key=lambda p: (p.scope == "HOST", p.id != vm.iso_pool_id, p.id != root_pool))


def holders(s, iso: Template) -> list[str]:
    """Names of the VMs the ISO is attached to (deleteIso is refused while there are any)."""
    return list(s.scalars(select(VirtualMachine.name).where(VirtualMachine.iso_id == iso.id,
                                                            VirtualMachine.removed.is_(None),
                                                            VirtualMachine.state.notin_(NOT_HOLDING))
                          .order_by(VirtualMachine.id)))
