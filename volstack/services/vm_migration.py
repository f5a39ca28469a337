"""Live migration of a running VM to another host (migrateVirtualMachine with hostid,
migrateVirtualMachineWithVolume for a running VM).

Disks on shared pools (NFS, SharedMountPoint) stay where they are: both hosts open the same images.
Volumes on a host's local pool pin the VM to that host, unless migrateVirtualMachineWithVolume moves
them first, with the live mirror, to a shared pool the destination reaches (the mirror runs on the
source, which cannot write into another host's local pool).

The steps on the hosts are in agent/migration.py. The VM is Migrating (committed) while they run; on
any failure it is Running on the source again, with the reason in an event and in its details.
"""
from urllib.parse import urlparse

from sqlalchemy import select

from volstack.db.models import Host
from volstack.db.storage_models import StoragePool, StoragePoolHost, VirtualMachine, Volume
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InsufficientCapacity, InvalidParameter, ResourceUnavailable
from volstack.services import encryption, events
from volstack.services.lifecycle import VM


def _volumes(s, vm) -> list[Volume]:
    return list(s.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None))
                          .order_by(Volume.device_id)))


def placement_problem(s, vm, target: Host, volume_map: dict) -> str | None:
    """Why the VM's disks cannot be used from target once volume_map ({volume: pool}) is applied."""
    for vol in _volumes(s, vm):
        if vol.pool_id is None:
            continue
        mapped = volume_map.get(vol.id)
        pool = mapped or s.get(StoragePool, vol.pool_id)
        if vol.state != "Ready":
            return f"volume {vol.name} is {vol.state}"
        if pool.scope == "HOST":
            if mapped is not None:
                return (f"volume {vol.name} would move to {pool.name}, the local storage of a host: the live "
                        "mirror runs on the source host, which cannot reach it; pick a shared pool")
            if pool.host_id != target.id:
                return (f"volume {vol.name} is on {pool.name}, local storage of its host, which pins the VM there; "
                        "use migrateVirtualMachineWithVolume with migrateto[0].volume/.pool to move it to a "
                        f"shared pool host {target.name} reaches")
        elif not s.scalar(select(StoragePoolHost.id).where(StoragePoolHost.pool_id == pool.id,
                                                           StoragePoolHost.host_id == target.id)):
            return f"host {target.name} has not connected storage pool {pool.name} (volume {vol.name})"
    if vm.iso_id is not None and vm.iso_pool_id is not None and vm.state == "Running":
        # the ISO in the CD drive travels: the destination opens the same copy
        pool = s.get(StoragePool, vm.iso_pool_id)
        if not s.scalar(select(StoragePoolHost.id).where(StoragePoolHost.pool_id == pool.id,
                                                         StoragePoolHost.host_id == target.id)):
            return (f"the ISO attached to the VM is on storage pool {pool.name}, which host {target.name} has not "
                    "connected; detach it (detachIso) before migrating")
    return None


def suitable_hosts(s, vm, volume_map=None) -> list[Host]:
    """Other Up, Enabled hosts of the VM's zone and hypervisor that reach all its disks."""
    hosts = s.scalars(select(Host).where(Host.zone_id == vm.zone_id, Host.hypervisor == vm.hypervisor,
                                         Host.state == "Up", Host.resource_state == "Enabled",
                                         Host.id != vm.host_id).order_by(Host.id))
    return [h for h in hosts if placement_problem(s, vm, h, volume_map or {}) is None]


def _address(host: Host) -> str:
    """Where the destination receives the guest's memory: the address its agent is reached on."""
    return urlparse(host.url or "").hostname or host.name


def live_migrate(s, ctx, vm: VirtualMachine, target: Host | None, volume_map: dict, progress=None) -> VirtualMachine:
    """volume_map: {Volume: StoragePool} to move with the live mirror before the VM moves."""
    from volstack.services import volume_migration
    source = s.get(Host, vm.host_id)
    by_id = {v.id: p for v, p in volume_map.items()}
    if target is None:
        hosts = suitable_hosts(s, vm, by_id)
        if not hosts:
            raise InsufficientCapacity(f"No other Up, Enabled host can take running VM {vm.name} without moving "
                                       "its storage (local volumes pin it to its host)")
        target = hosts[0]
    if target.id == vm.host_id:
        raise InvalidParameter(f"VM {vm.name} already runs on host {target.name}")
    if target.state != "Up" or target.resource_state != "Enabled":
        raise ResourceUnavailable(f"Host {target.name} is {target.state}/{target.resource_state}; live migration "
                                  "needs an Up, Enabled host")
    problem = placement_problem(s, vm, target, by_id)
    if problem:
        raise InvalidParameter(f"Cannot live-migrate VM {vm.name} to host {target.name}: {problem}")
    for vol, pool in volume_map.items():
        if vol.pool_id != pool.id:
            volume_migration.migrate(s, ctx, vol, pool, livemigrate=True, progress=progress)
    VM.fire(s, vm, "MigrationRequested", details={**(vm.details or {}), "migrating_to": target.uuid})
    s.commit()                  # pollers see Migrating; a crash leaves a state settle() can resolve
    src, dst = channel(source), channel(target)
    arrived = False
    try:
        spec = src.call("vm_migrate_spec", name=vm.uuid)
        encryption.add_secrets(s, vm, spec["spec"]["disks"])       # the source never hands out passphrases
        s.commit()          # that lookup began a transaction: none stays open across the migration
        uri = dst.call("vm_migrate_prepare", vm=spec["spec"], address=_address(target))["uri"]
        try:
            done = run_long(src, "vm_migrate", progress, name=vm.uuid, uri=uri)
            dst.call("vm_migrate_finish", name=vm.uuid, resume=bool(done.get("resume")))
            arrived = True
        finally:
            if not arrived:
                _undo(src, dst, vm)
    except CloudError as exc:
        reason = f"live migration to host {target.name} failed, the VM keeps running on {source.name}: {exc.text}"
        VM.fire(s, vm, "OperationFailed", details={**_without_marker(vm), "error": reason})
        events.record(s, ctx, "VM.MIGRATE", f"VM {vm.name}: {reason}", level="ERROR",
                      resource_type="VirtualMachine", resource_uuid=vm.uuid)
        s.commit()
        raise type(exc)(f"VM {vm.name}: {reason}") from None
    _drop_source_copy(s, ctx, src, vm, source)
    VM.fire(s, vm, "OperationSucceeded", host_id=target.id, last_host_id=target.id,
            details={k: v for k, v in _without_marker(vm).items() if k != "error"})
    events.record(s, ctx, "VM.MIGRATE", f"VM {vm.name} live-migrated from host {source.name} to {target.name}"
                  + (f" with {len(volume_map)} volume(s)" if volume_map else ""), resource_type="VirtualMachine",
                  resource_uuid=vm.uuid)
    return vm


def _without_marker(vm) -> dict:
    return {k: v for k, v in (vm.details or {}).items() if k != "migrating_to"}


def _undo(src, dst, vm) -> None:
    """The guest did not arrive: drop the incoming QEMU, let the source run the guest again."""
    for ch, cmd in ((dst, "vm_migrate_abort"), (src, "vm_migrate_resume")):
        try:
            ch.call(cmd, name=vm.uuid)
        except CloudError:
            pass        # the failure being reported matters more; settle() re-checks after a crash


def _drop_source_copy(s, ctx, src, vm, source) -> None:
    s.commit()
    try:
        src.call("vm_destroy", name=vm.uuid)
    except CloudError as exc:
        events.record(s, ctx, "VM.MIGRATE", f"VM {vm.name}: its paused copy on host {source.name} could not be "
                      f"removed after the migration: {exc.text}", level="WARN", resource_type="VirtualMachine",
                      resource_uuid=vm.uuid)


def _state_on(host: Host | None, vm_uuid: str) -> str | None:
    if host is None:
        return None
    try:
        return next((v["state"] for v in channel(host).call("vm_list")["vms"] if v["name"] == vm_uuid), "Stopped")
    except CloudError:
        return None


def settle(s, ctx, vm) -> str:
    """A live migration was interrupted with its management server: find where the guest is and record it.
    Returns the host-side state the VM is given (Running or Stopped)."""
    source = s.get(Host, vm.host_id) if vm.host_id else None
    target = s.scalar(select(Host).where(Host.uuid == (vm.details or {}).get("migrating_to")))
    where = None
    if target is not None and _state_on(target, vm.uuid) in ("Running", "Incoming"):
        try:        # the memory may all have arrived: finishing is then the right ending
            channel(target).call("vm_migrate_finish", name=vm.uuid, resume=True, timeout=5)
            where = target
        except CloudError:
            if source is not None:
                _undo(channel(source), channel(target), vm)
    if where is None and _state_on(source, vm.uuid) == "Running":
        where = source
    elif where is target and source is not None:
        _drop_source_copy(s, ctx, channel(source), vm, source)
    if where is None:
        return VM.fire(s, vm, "AgentReportStopped", host_id=None, details=_without_marker(vm))
    return VM.fire(s, vm, "AgentReportRunning", host_id=where.id, last_host_id=where.id, details=_without_marker(vm))


def hosts_for_migration(s, vm) -> list[tuple[Host, str | None]]:
    """findHostsForMigration: every other host of the VM's zone and hypervisor, with why it is unsuitable."""
    hosts = s.scalars(select(Host).where(Host.zone_id == vm.zone_id, Host.hypervisor == vm.hypervisor,
                                         Host.id != vm.host_id).order_by(Host.id))
    out = []
    for h in hosts:
        if h.state != "Up" or h.resource_state != "Enabled":
            out.append((h, f"the host is {h.state}/{h.resource_state}"))
        else:
            out.append((h, placement_problem(s, vm, h, {})))
    return out
