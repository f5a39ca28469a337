"""Volume migration between primary pools (migrateVolume, and the moves of migrateVirtualMachineWithVolume,
changeServiceForVirtualMachine and changeOfferingForVolume with automigrate).

A detached volume, or one of a stopped VM, is copied by a host that reaches both pools (qemu-img); a volume
attached to a running guest moves live through QEMU's mirror on the guest's host (agent/mirror.py), which
switches the guest to the copy once it is in sync. Either way the old copy is removed afterwards. The volume
is Migrating (committed) meanwhile, with its destination (and the id of a copy's host task) in
details["migrating_to"], so that a job that dies with its management server can be settled from what the host
reports (`settle`): the guest's image for a live move, the copy's task (cancelled or finished) for a cold one.
"""
import uuid

from sqlalchemy import select

from volstack.db.models import Host
from volstack.db.storage_models import StoragePool, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, InsufficientCapacity, InvalidParameter
from volstack.services import allocator, encryption, events
from volstack.services.lifecycle import VOLUME
from volstack.services.volumes import begin_host_work, check_operation, host_work_failed


def _hosts_reaching(s, *pools) -> list[Host]:
    from volstack.db.storage_models import StoragePoolHost
    ids = None
    for pool in pools:
        have = set(s.scalars(select(StoragePoolHost.host_id).where(StoragePoolHost.pool_id == pool.id)))
        ids = have if ids is None else ids & have
    return [h for h in s.scalars(select(Host).where(Host.id.in_(ids or set()), Host.state == "Up")
                                 .order_by(Host.id))]


def migration_problem(s, vol: Volume, pool: StoragePool) -> str | None:
    """Why vol cannot move to pool (None: it can)."""
    if pool.id == vol.pool_id:
        return "the volume is already there"
    vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
    host = s.get(Host, vm.host_id) if vm is not None and vm.state == "Running" else None

    ok, why = allocator.candidates(s, zone_id=vol.zone_id, size=vol.size, offering=allocator.placement_of(pool), hypervisor=vol.hypervisor
                                   or "KVM", host=host, account_id=vol.account_id,
                                   encrypted=encryption.is_encrypted(vol))
    if pool.id not in {p.id for p in ok}:
        return why.get(pool.name, "not suitable")
    src = s.get(StoragePool, vol.pool_id)
    if host is None and not _hosts_reaching(s, src, pool):
        return f"no Up host reaches both {src.name} and {pool.name}"
    return None


def check(s, vol: Volume, pool: StoragePool, livemigrate=False) -> None:
    """Every reason to refuse moving vol to pool, before anything moves (a VM's volumes are all checked first)."""
    if vol.state != "Ready":
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Ready volumes can be migrated")
    vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
    check_operation(s, "migrate", vm, vol)
    if vm is not None and vm.state == "Running" and not livemigrate:
        raise InvalidParameter(f"Volume {vol.name} is attached to running VM {vm.name}: pass livemigrate=true to "
                               "move it while the guest runs, or stop the VM")
    problem = migration_problem(s, vol, pool)
    if problem:
        raise InsufficientCapacity(f"Cannot migrate volume {vol.name} to storage pool {pool.name}: {problem}")
    from volstack.services import reconcile
    reconcile.check_not_open(s, vol, vm if vm is not None and vm.state == "Running" else None, "migrate")


def migrate(s, ctx, vol: Volume, pool: StoragePool, livemigrate=False, progress=None) -> Volume:
    check(s, vol, pool, livemigrate)
    vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
    running = vm is not None and vm.state == "Running"
    src = s.get(StoragePool, vol.pool_id)
    from volstack.drivers.default import serial_of
    from volstack.drivers.hosts import run_long
    new_path = vol.path if src.path != pool.path or src.host_address != pool.host_address else vol.path + "-m"
    fmt, formats = vol.format.lower(), driver_for(pool.provider).CAPABILITIES.get("image_formats")
    if formats and fmt not in formats.split(","):
        fmt = formats.split(",")[0]          # e.g. qcow2 becomes raw on an RBD pool
    # where the volume is going and the host task's id, for settle() if this job dies with its server meanwhile
    task = str(uuid.uuid4())
    enc = encryption.spec(s, vol)          # the copy is encrypted with the same passphrase, never written in clear
    begin_host_work(s, vol, "MigrationRequested", details={**(vol.details or {}), "migrating_to": {
        "pool": pool.uuid, "path": new_path, "format": fmt, "live": running, "task": task}})
    if progress:
        progress(1)
    try:
        if running:
            host = s.get(Host, vm.host_id)
            s.commit()
            run_long(channel(host), "volume_mirror", progress, vm=vm.uuid, serial=serial_of(vol),
                     dst_pool=driver_for(pool.provider).spec(pool), dst_name=new_path, format=fmt,
                     **({"encryption": enc} if enc else {}))
        else:
            host = _hosts_reaching(s, src, pool)[0]
            s.commit()      # the hosts query began a transaction again: none stays open across the copy
            run_long(channel(host), "volume_copy", progress, task, src_pool=driver_for(src.provider).spec(src),
                     src_name=vol.path, src_format=vol.format.lower(), dst_pool=driver_for(pool.provider).spec(pool),
                     dst_name=new_path, format=fmt, **({"src_encryption": enc, "encryption": enc} if enc else {}))
    except CloudError as exc:
        host_work_failed(s, vol, exc, details=_without_marker(vol),
                         error=f"migration to {pool.name} failed, the volume stays on {src.name}: {exc.text}")
    _moved(s, ctx, vol, src, pool, new_path, fmt, host if running else None)
    events.record(s, ctx, "VOLUME.MIGRATE", f"Volume {vol.name} migrated from {src.name} to {pool.name}"
                  + (" while attached" if running else ""), resource_type="Volume", resource_uuid=vol.uuid)
    return vol


def _without_marker(vol: Volume) -> dict:
    return {k: v for k, v in (vol.details or {}).items() if k != "migrating_to"}


def _moved(s, ctx, vol: Volume, src: StoragePool, pool: StoragePool, new_path: str, fmt: str, host=None) -> None:
    """The volume's image is now new_path on pool: remove the old copy (a warning if it stays) and record it.
    host: the one to ask (the guest's, for a live move), else any that reaches the old pool."""
    old = Volume(uuid=vol.uuid, path=vol.path, format=vol.format)
    try:
        ch = channel(host or _hosts_reaching(s, src)[0])
        s.commit()
        driver_for(src.provider).delete_volume(ch, src, old)
    except (CloudError, IndexError) as exc:
        why = exc.text if isinstance(exc, CloudError) else "no Up host reaches it"
        events.record(s, ctx, "VOLUME.MIGRATE", f"Volume {vol.name}: the old copy on {src.name} could not be "
                      f"removed: {why}", level="WARN", resource_type="Volume", resource_uuid=vol.uuid)
    VOLUME.fire(s, vol, "OperationSucceeded", pool_id=pool.id, last_pool_id=src.id, path=new_path, error=None,
                format=fmt.upper(), details=_without_marker(vol))
    s.commit()          # the old copy is gone: what follows in this job (a VM's next volume) must not undo this


def pools_for_migration(s, ctx, vol: Volume):
    """(pool, suitable) for every other pool in the zone, as findStoragePoolsForMigration lists them."""
    if vol.pool_id is None:
        raise InvalidParameter(f"Volume {vol.name} is not on any storage pool yet")
    rows = s.scalars(select(StoragePool).where(StoragePool.zone_id == vol.zone_id, StoragePool.state != "Removed",
                                               StoragePool.id != vol.pool_id).order_by(StoragePool.id))
    return [(p, migration_problem(s, vol, p) is None) for p in rows]


def settle(s, ctx, vol: Volume, reason: str) -> None:
    """A migration job died with its management server (vol is Migrating). A live move asks the guest's host
    which image the guest uses, stopping a mirror that has not switched yet (the host then removes the copy):
    the volume is recorded where the guest's disk is. A copy for a stopped guest or a detached volume is
    cancelled on the host that runs it (its partial copy removed), or adopted if it had finished."""
    to, vm = vol.details["migrating_to"], s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
    host = s.get(Host, vm.host_id) if to.get("live") and vm is not None and vm.host_id else None
    pool = s.scalar(select(StoragePool).where(StoragePool.uuid == to["pool"]))
    if host is not None:
        from volstack.drivers.default import serial_of
        try:
            now = channel(host).call("volume_mirror_cancel", vm=vm.uuid, serial=serial_of(vol))
        except CloudError as exc:
            now = None
            reason += (f", and host {host.name} could not say which image VM {vm.name} uses ({exc.text}): the move "
                       f"may have switched it to {to['path']} on {pool.name if pool else 'the destination'}; check "
                       "before relying on the volume")
        if pool is not None and now and (now.get("pool_uuid"), now.get("name")) == (pool.uuid, to["path"]):
            src = s.get(StoragePool, vol.pool_id)
            _moved(s, ctx, vol, src, pool, to["path"], to["format"], host)
            events.record(s, ctx, "VOLUME.RECOVER", f"Volume {vol.name}: {reason}; the guest had already switched "
                          f"to the copy on {pool.name}, where the volume is now", level="WARN",
                          resource_type="Volume", resource_uuid=vol.uuid)
            return
    elif not to.get("live"):
        done, outcome = _settle_copy(s, vol, to, pool, reason)
        if done is not None:
            src = s.get(StoragePool, vol.pool_id)
            _moved(s, ctx, vol, src, pool, to["path"], done.get("format") or to["format"])
            events.record(s, ctx, "VOLUME.RECOVER", f"Volume {vol.name}: {reason}; {outcome}", level="WARN",
                          resource_type="Volume", resource_uuid=vol.uuid)
            return
        reason += f"; {outcome}"
    VOLUME.fire(s, vol, "OperationFailed", error=reason, details=_without_marker(vol))
    events.record(s, ctx, "VOLUME.RECOVER", f"Volume {vol.name}: {reason}; it is Ready again on its old pool",
                  level="WARN", resource_type="Volume", resource_uuid=vol.uuid)


def _settle_copy(s, vol: Volume, to: dict, pool: StoragePool | None, reason: str) -> tuple[dict | None, str]:
    """Stop the host's volume_copy to the destination (task_cancel removes its partial copy). Returns the copy's
    result if it had finished (the volume can be recorded there), else None, and what happened, for the event."""
    where = f"{to['path']} on {pool.name if pool else 'the destination pool'}"
    src = s.get(StoragePool, vol.pool_id)
    problems = []
    for host in _hosts_reaching(s, src, pool) if pool is not None else []:
        try:
            task = channel(host).call("task_cancel", reason=reason, **(
                {"task": to["task"]} if to.get("task") else     # else: by what it works on (a record before ids)
                {"command": "volume_copy", "match": {"dst_pool": to["pool"], "dst_name": to["path"]}}))
        except CloudError as exc:
            problems.append(f"host {host.name} could not be asked ({exc.text})")
            continue
        state = task.get("state")
        if state == "done":
            return task.get("result") or {}, (f"host {host.name} had finished the copy to {pool.name}, where the "
                                              f"volume is now (its old copy on {src.name} is removed)")
        if state == "failed":
            return None, (f"host {host.name} stopped its copy to {where} and removed it"
                          if (task.get("error") or "").startswith("cancelled:") else
                          f"the copy to {where} had failed on host {host.name}: {task.get('error')}")
        if state == "running":
            return None, (f"host {host.name} could not stop its copy to {where}: remove that image once the copy "
                          "ends (listStoragePoolObjects shows it)")
    if problems:
        return None, (f"{', '.join(problems)}: a copy to {where} may still be running there or left behind; "
                      "check the pool before using that name")
    return None, "no host had a copy of it under way"
