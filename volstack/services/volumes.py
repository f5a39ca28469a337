"""Volumes: lazy allocation on first attach, attach/detach, resize, destroy/recover/delete, listing.

Work on a host (creating an image, hot-plugging it) happens after the volume has moved to a
transitional state that is committed first, so a crash leaves a state the reconciler can settle.
"""
from sqlalchemy import select

from volstack.db import aggregate, counters
from volstack.db.models import Host, utcnow
from volstack.db.storage_models import DiskOffering, ServiceOffering, StoragePool, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, InvalidParameter, ResourceInUse, ResourceUnavailable
from volstack.services import allocator, encryption, events, infra, limits, lookup, offerings, reconcile
from volstack.services import settings as S
from volstack.services.context import check_access, owner_filter
from volstack.services.lifecycle import VOLUME
from volstack.services.listing import ListQuery, identity_filter, keyword_filter, paginate

lookup.register_entity("Volume", Volume)
GIB = 1024 ** 3
MAX_DATA_VOLUMES = {"KVM": 32, "Simulator": 32}     # CloudStack's hypervisor_capabilities defaults
ISO_DEVICE_ID = 3                                   # KVM keeps device 3 for the CD-ROM
NOT_ON_PRIMARY = ("Allocated", "Uploaded")          # states whose first use places an image on a pool


def _live(model):
    return model.removed.is_(None)


def begin_host_work(s, vol: Volume, event: str, **values) -> None:
    """Move vol to its transitional state and commit it before asking a host to act: pollers see it,
    a crash leaves a state the reconciler can settle, and no database lock is held during host work."""
    VOLUME.fire(s, vol, event, **values)
    s.commit()


def host_work_failed(s, vol: Volume, exc: CloudError, **values):
    """Put vol back in a stable state with the reason, committed: the caller's exception must not undo it."""
    VOLUME.fire(s, vol, "OperationFailed", **values)
    s.commit()
    raise exc


def _account_counts(s, v):
    if v["removed"] is None and v["state"] not in ("Destroy", "Expunged"):
        yield "account", v["account_id"], "volume", 1
        yield "account", v["account_id"], "primary_storage", v["size"]
    if v["removed"] is None and v["state"] != "Expunged":       # what listVolumes counts (list_volumes' total)
        yield "account", v["account_id"], "volume_rows", 1
        if v["state"] == "Destroy":
            yield "account", v["account_id"], "volume_rows_destroy", 1


# The counts limits read (maintained on every change); the recounts below are what updateResourceCount trusts.
counters.counted(Volume, ("account_id", "state", "removed", "size"), _account_counts)
limits.register_usage_counter("volume", lambda s, acc: aggregate.count(
    s, Volume, Volume.account_id == acc, _live(Volume), Volume.state.notin_(("Destroy", "Expunged"))))
limits.register_internal_counter("volume_rows", lambda s, acc: aggregate.count(
    s, Volume, Volume.account_id == acc, _live(Volume), Volume.state != "Expunged"))
limits.register_internal_counter("volume_rows_destroy", lambda s, acc: aggregate.count(
    s, Volume, Volume.account_id == acc, _live(Volume), Volume.state == "Destroy"))
limits.register_usage_counter("primary_storage", lambda s, acc: aggregate.total(
    s, Volume.size, Volume.account_id == acc, _live(Volume), Volume.state.notin_(("Destroy", "Expunged"))))


def get_volume(s, ctx, uuid) -> Volume:
    vol = s.scalar(select(Volume).where(Volume.uuid == uuid, _live(Volume)))
    if vol is None:
        raise InvalidParameter(f"Unable to find volume by id {uuid}")
    check_access(s, ctx, vol.account_id, "volume")
    return vol


def new_volume(s, ctx, *, name, zone_id, size, offering, volume_type="DATADISK", account_id=None, domain_id=None,
               miniops=None, maxiops=None, hypervisor=None) -> Volume:
    account_id = account_id or ctx.account_id
    limits.check_limit(s, account_id, "volume")
    limits.check_limit(s, account_id, "primary_storage", size)
    vol = Volume(name=name, volume_type=volume_type, size=size, zone_id=zone_id, account_id=account_id,
                 domain_id=domain_id or ctx.domain_id, disk_offering_id=offering.id if offering else None,
                 provisioning_type=offering.provisioning_type if offering else "thin", hypervisor=hypervisor,
                 min_iops=miniops if miniops is not None else (offering.min_iops if offering else None),
                 max_iops=maxiops if maxiops is not None else (offering.max_iops if offering else None))
    if offering is not None and offering.encrypt:      # as CloudStack: the passphrase exists from the start
        vol.passphrase_id = encryption.new_passphrase(s)
    s.add(vol)
    s.flush()
    vol.path = vol.uuid
    return vol


def root_of(s, vm) -> Volume:
    vol = s.scalar(select(Volume).where(Volume.vm_id == vm.id, Volume.volume_type == "ROOT", _live(Volume)))
    if vol is None:
        raise InvalidParameter(f"VM {vm.name} has no ROOT volume")
    return vol


def create_volume(s, ctx, *, name=None, zoneid=None, diskofferingid=None, size=None, miniops=None, maxiops=None) -> Volume:
    """createVolume: the database row only (Allocated); the image is made on first attach."""
    if not diskofferingid:
        raise InvalidParameter("Either diskofferingid or snapshotid must be passed to createVolume")
    if not zoneid:
        raise InvalidParameter("Unable to execute API command createvolume due to missing parameter zoneid")
    zone = infra.get_zone(s, zoneid)
    offering = offerings.get_disk_offering(s, ctx, diskofferingid)
    nbytes = offerings.disk_size_for(offering, size, s=s)
    miniops, maxiops = offerings.storage_iops_for(offering, miniops, maxiops, s=s)
    vol = new_volume(s, ctx, name=name or f"DATA-{utcnow():%Y%m%d%H%M%S}", zone_id=zone.id, size=nbytes,
                     offering=offering, miniops=miniops, maxiops=maxiops)
    events.record(s, ctx, "VOLUME.CREATE", f"Volume {vol.name} created ({nbytes} bytes)", resource_type="Volume",
                  resource_uuid=vol.uuid)
    return vol


def list_volumes(s, ctx, q: ListQuery, **f):
    owner = owner_filter(s, ctx, Volume, listall=q.listall, isrecursive=q.isrecursive, account=q.account,
                         domain_uuid=q.domainid)
    stmt = select(Volume).where(_live(Volume), Volume.state != "Expunged", *owner).order_by(Volume.id)
    hide_destroyed = not ctx.is_admin and not S.Settings.value_in(s, S.ALLOW_USER_EXPUNGE)
    if hide_destroyed:
        stmt = stmt.where(Volume.state != "Destroy")
    total = None
    if not q.keyword and not any(f.get(k) for k in f):      # the plain page: its total from the maintained counts
        total = _listed_total(s, ctx, q, hide_destroyed)
    stmt = stmt.where(*identity_filter(Volume, f))
    if f.get("type"):
        stmt = stmt.where(Volume.volume_type == f["type"].upper())
    if f.get("state"):
        stmt = stmt.where(Volume.state == VOLUME.canonical(f["state"]))
    if f.get("isencrypted") is not None:      # encrypted: has a passphrase (its image is or will be LUKS)
        stmt = stmt.where(Volume.passphrase_id.isnot(None) if f["isencrypted"] else Volume.passphrase_id.is_(None))
    if f.get("zoneid"):
        stmt = stmt.where(Volume.zone_id == infra.get_zone(s, f["zoneid"]).id)
    if f.get("storageid"):
        stmt = stmt.where(Volume.pool_id == s.scalar(select(StoragePool.id).where(StoragePool.uuid == f["storageid"])))
    if f.get("virtualmachineid"):
        stmt = stmt.where(Volume.vm_id == s.scalar(select(VirtualMachine.id).where(VirtualMachine.uuid == f["virtualmachineid"])))
    if f.get("diskofferingid"):
        stmt = stmt.where(Volume.disk_offering_id == s.scalar(select(DiskOffering.id).where(DiskOffering.uuid == f["diskofferingid"])))
    elif f.get("serviceofferingid"):          # CloudStack: the service offering's disk offering; diskofferingid wins
        stmt = stmt.where(Volume.disk_offering_id == s.scalar(
            select(ServiceOffering.disk_offering_id).where(ServiceOffering.uuid == f["serviceofferingid"])))
    if f.get("hostid"):
        host = infra.get_host(s, f["hostid"])
        stmt = stmt.where(Volume.vm_id.in_(select(VirtualMachine.id).where(VirtualMachine.host_id == host.id)))
    if f.get("clusterid"):
        cl = infra.get_cluster(s, f["clusterid"])
        stmt = stmt.where(Volume.pool_id.in_(select(StoragePool.id).where(StoragePool.cluster_id == cl.id)))
    if f.get("podid"):
        pod = infra.get_pod(s, f["podid"])
        stmt = stmt.where(Volume.pool_id.in_(select(StoragePool.id).where(StoragePool.pod_id == pod.id)))
    stmt = stmt.where(*keyword_filter(q, Volume.name))
    return paginate(s, stmt, q, total=total)


def _listed_total(s, ctx, q: ListQuery, hide_destroyed):
    """How many volumes a plain listVolumes page counts, from the per-account counts kept with every change,
    for the owner sets (as context.owner_filter draws them) that are one row or a sum over accounts: the
    caller's own account, or everything (the root admin's listall). Others are counted."""
    if q.account or q.domainid:
        return None
    if ctx.is_root_admin and q.listall:
        return counters.sum_all(s, "account", "volume_rows")
    if not ctx.is_admin or not q.listall:
        rows = counters.get(s, "account", ctx.account_id, "volume_rows")
        return rows - (counters.get(s, "account", ctx.account_id, "volume_rows_destroy") if hide_destroyed else 0)
    return None


# ---------------------------------------------------------------- placing images on pools

def qos_for(s, vol) -> dict:
    offering = s.get(DiskOffering, vol.disk_offering_id) if vol.disk_offering_id else None
    return offerings.qos_of(offering) if offering else {}


# (predicate(volume), create(s, ctx, volume, pool, host, progress) -> result): how volumes that are not blank
# get their first image (ROOT volumes from templates register here), instead of the driver's create_volume.
root_creators: list = []
# hook(s, volume) while a volume is expunged, for copies it has outside primary storage.
expunge_hooks: list = []
# hook(s, volume, vm) when a volume is detached from vm.
detach_hooks: list = []
# check(s, op, vm, volume) raises a CloudError naming what forbids op on a VM's volume (volume None: the VM as a
# whole; vm None: a detached volume); e.g. VM snapshots forbid attach, detach, resize and migrate. ops: attach,
# detach, resize, migrate, snapshot, revertSnapshot, changeServiceOffering.
operation_checks: list = []


def check_operation(s, op: str, vm: VirtualMachine | None, vol: Volume | None = None) -> None:
    for check in operation_checks:
        check(s, op, vm, vol)


def realize(s, ctx, vol: Volume, host: Host, cluster_id=None, progress=None) -> StoragePool:
    """Create the image of an Allocated volume on a pool the host can reach (lazy allocation)."""
    offering = s.get(DiskOffering, vol.disk_offering_id) if vol.disk_offering_id else None
    pool = allocator.choose(s, zone_id=vol.zone_id, size=vol.size, offering=offering, hypervisor=host.hypervisor,
                            host=host, cluster_id=cluster_id or host.cluster_id, account_id=vol.account_id,
                            encrypted=encryption.wanted(s, vol))
    enc = encryption.prepare(s, vol)        # its passphrase is committed with the transition, before any image
    begin_host_work(s, vol, "CreateRequested", pool_id=pool.id, hypervisor=host.hypervisor)
    try:
        creator = next((fn for wants, fn in root_creators if wants(vol)), None)
        res = creator(s, ctx, vol, pool, host, progress) if creator else \
            driver_for(pool.provider).create_volume(channel(host), pool, vol, encryption=enc)
    except CloudError as exc:
        host_work_failed(s, vol, exc, pool_id=None, error=f"creating the image on {pool.name} failed: {exc.text}")
    VOLUME.fire(s, vol, "OperationSucceeded", physical_size=res.get("physical_size"), error=None,
                encrypt_format=encryption.FORMAT if enc else None)
    events.record(s, ctx, "VOLUME.CREATE", f"Volume {vol.name} created on storage pool {pool.name}",
                  resource_type="Volume", resource_uuid=vol.uuid)
    return pool


def _next_device_id(s, vm) -> int:
    used = set(s.scalars(select(Volume.device_id).where(Volume.vm_id == vm.id, _live(Volume))))
    dev = 1
    while dev in used or dev == ISO_DEVICE_ID:
        dev += 1
    return dev


def attach(s, ctx, vol: Volume, vm: VirtualMachine, deviceid=None) -> Volume:
    check_access(s, ctx, vm.account_id, "virtual machine")
    if vol.vm_id is not None:
        raise ResourceInUse(f"Volume {vol.name} is already attached to a VM; detach it first")
    if vol.volume_type != "DATADISK":
        raise InvalidParameter(f"Volume {vol.name} is a {vol.volume_type} volume; only data disks can be attached")
    if vol.state not in ("Allocated", "Ready", "Uploaded"):
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Allocated, Uploaded or Ready volumes can be "
                               "attached")
    if vm.state not in ("Running", "Stopped"):
        raise InvalidParameter(f"VM {vm.name} is {vm.state}; attach needs a Running or Stopped VM")
    check_operation(s, "attach", vm, vol)
    if vol.zone_id != vm.zone_id:
        raise InvalidParameter(f"Volume {vol.name} and VM {vm.name} are in different zones")
    if vol.hypervisor and vol.hypervisor != vm.hypervisor:
        raise InvalidParameter(f"Volume {vol.name} was created for {vol.hypervisor}; VM {vm.name} runs on {vm.hypervisor}")
    limit = MAX_DATA_VOLUMES.get(vm.hypervisor, 32)
    count = aggregate.count(s, Volume, Volume.vm_id == vm.id, _live(Volume), Volume.volume_type == "DATADISK")
    if count >= limit:
        raise InvalidParameter(f"The specified VM already has the maximum number of data disks ({limit}) attached. "
                               "Please specify another VM.")
    if deviceid is not None:
        if deviceid < 1 or deviceid == ISO_DEVICE_ID or deviceid > limit + 1:
            raise InvalidParameter(f"deviceid {deviceid} is not usable: pick 1, 2 or 4–{limit + 1} (0 is the root "
                                   f"disk, {ISO_DEVICE_ID} the CD-ROM)")
        if s.scalar(select(Volume.id).where(Volume.vm_id == vm.id, Volume.device_id == deviceid, _live(Volume))):
            raise InvalidParameter(f"Device {deviceid} is used in VM {vm.name}")
    dev = deviceid if deviceid is not None else _next_device_id(s, vm)
    reconcile.check_not_open(s, vol, None, "attach")
    if vm.state == "Running":
        host = s.get(Host, vm.host_id)
        if vol.state in NOT_ON_PRIMARY:
            realize(s, ctx, vol, host)
        pool = s.get(StoragePool, vol.pool_id)
        drv = driver_for(pool.provider)
        if pool.scope == "HOST" and pool.host_id != host.id:
            raise InvalidParameter(f"Volume {vol.name} is on local storage of another host; migrate it first")
        encryption.check_pool(s, vol, pool, "attach")
        disk = drv.disk(pool, vol, dev, qos_for(s, vol), encryption.spec(s, vol))
        begin_host_work(s, vol, "AttachRequested")
        try:
            channel(host).call("disk_attach", vm=vm.uuid, disk=disk)
        except CloudError as exc:
            host_work_failed(s, vol, exc, error=f"hot-plugging into VM {vm.name} failed: {exc.text}")
        VOLUME.fire(s, vol, "OperationSucceeded")
    vol.vm_id, vol.device_id, vol.attached = vm.id, dev, utcnow()
    events.record(s, ctx, "VOLUME.ATTACH", f"Volume {vol.name} attached to VM {vm.name} as device {dev}",
                  resource_type="Volume", resource_uuid=vol.uuid)
    return vol


def detach(s, ctx, vol: Volume) -> Volume:
    if vol.vm_id is None:
        raise InvalidParameter(f"Volume {vol.name} is not attached to any VM")
    if vol.volume_type == "ROOT":
        raise InvalidParameter(f"Volume {vol.name} is a root disk; it cannot be detached")
    vm = s.get(VirtualMachine, vol.vm_id)
    if vm.state not in ("Running", "Stopped"):
        raise InvalidParameter(f"VM {vm.name} is {vm.state}; detach needs a Running or Stopped VM")
    check_operation(s, "detach", vm, vol)
    if vm.state == "Running" and vol.state == "Ready":
        from volstack.drivers.default import serial_of
        host = s.get(Host, vm.host_id)
        s.commit()      # a guest may take long to acknowledge the unplug: no database lock is held meanwhile
        channel(host).call("disk_detach", vm=vm.uuid, serial=serial_of(vol))
    for hook in detach_hooks:
        hook(s, vol, vm)
    vol.vm_id, vol.device_id, vol.attached = None, None, None
    events.record(s, ctx, "VOLUME.DETACH", f"Volume {vol.name} detached from VM {vm.name}", resource_type="Volume",
                  resource_uuid=vol.uuid)
    return vol


def _host_for_pool(s, pool) -> Host:
    from volstack.services.pools import hosts_in_scope
    hosts = hosts_in_scope(s, pool)
    if not hosts:
        raise ResourceUnavailable(f"No Up host can reach storage pool {pool.name}")
    return hosts[0]


def resize(s, ctx, vol: Volume, *, size_gb=None, diskofferingid=None, shrinkok=False, miniops=None, maxiops=None) -> Volume:
    check_operation(s, "resize", s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None, vol)
    if vol.volume_type == "ROOT":
        vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
        if vm is not None:
            from volstack.db.storage_models import ServiceOffering
            so = s.get(ServiceOffering, vm.service_offering_id)
            if so and so.root_disk_size:
                raise InvalidParameter("The root disk size is set by the VM's service offering; change the service "
                                       "offering to resize it")
    offering = offerings.get_disk_offering(s, ctx, diskofferingid) if diskofferingid else \
        (s.get(DiskOffering, vol.disk_offering_id) if vol.disk_offering_id else None)
    if diskofferingid is None and size_gb is None:
        raise InvalidParameter("Pass size (GB) or diskofferingid to resize a volume")
    if offering is not None and not offering.customized and size_gb is not None and vol.volume_type != "ROOT":
        raise InvalidParameter(f"Disk offering {offering.name} has a fixed size; pick a custom offering to set a size")
    new = offerings.disk_size_for(offering, size_gb, s=s) if offering is not None and (size_gb is not None or not offering.customized) \
        else size_gb * GIB
    if new < vol.size and not shrinkok:
        raise InvalidParameter(f"Shrinking volume {vol.name} from {vol.size} to {new} bytes needs shrinkok=true "
                               "(data beyond the new size is lost)")
    if new > vol.size:
        limits.check_limit(s, vol.account_id, "primary_storage", new - vol.size)
    if vol.state == "Ready":
        pool = s.get(StoragePool, vol.pool_id)
        vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
        host = s.get(Host, vm.host_id) if vm is not None and vm.state == "Running" else _host_for_pool(s, pool)
        if new > vol.size:
            ok, why = allocator.candidates(s, zone_id=vol.zone_id, size=new - vol.size, offering=offering,
                                           hypervisor=host.hypervisor, host=host, account_id=vol.account_id)
            if pool.id not in {p.id for p in ok}:
                from volstack.errors import InsufficientCapacity
                raise InsufficientCapacity(f"Storage pool {pool.name} cannot grow volume {vol.name}: "
                                           f"{why.get(pool.name, 'not suitable')}")
        enc = encryption.spec(s, vol)
        begin_host_work(s, vol, "ResizeRequested")
        try:
            if vm is not None and vm.state == "Running":
                from volstack.drivers.default import serial_of
                channel(host).call("disk_resize", vm=vm.uuid, serial=serial_of(vol), size=new,
                                   **({"encryption": enc} if enc else {}))
            else:
                driver_for(pool.provider).resize_volume(channel(host), pool, vol, new, shrinkok, encryption=enc)
        except CloudError as exc:
            host_work_failed(s, vol, exc, error=f"resizing to {new} bytes failed: {exc.text}")
        VOLUME.fire(s, vol, "OperationSucceeded", error=None)
    elif vol.state != "Allocated":
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Allocated or Ready volumes can be resized")
    vol.size = new
    if offering is not None:
        vol.disk_offering_id = offering.id
    if miniops is not None:
        vol.min_iops = miniops
    if maxiops is not None:
        vol.max_iops = maxiops
    events.record(s, ctx, "VOLUME.RESIZE", f"Volume {vol.name} resized to {new} bytes", resource_type="Volume",
                  resource_uuid=vol.uuid)
    return vol


def destroy(s, ctx, vol: Volume, expunge=False) -> Volume:
    if vol.vm_id is not None and vol.volume_type != "ROOT":
        raise InvalidParameter(f"Volume {vol.name} is attached to a VM; detach it first")     # as CloudStack: 431
    if not ctx.is_admin and (expunge or False) and not S.Settings.value_in(s, S.ALLOW_USER_EXPUNGE, account=ctx.account_id):
        raise InvalidParameter("Users may not expunge volumes here (allow.user.expunge.recover.volume=false)")
    VOLUME.fire(s, vol, "DestroyRequested", destroyed_at=utcnow())
    events.record(s, ctx, "VOLUME.DESTROY", f"Volume {vol.name} destroyed", resource_type="Volume", resource_uuid=vol.uuid)
    if expunge:
        expunge_volume(s, ctx, vol)
    return vol


def recover(s, ctx, vol: Volume) -> Volume:
    if vol.state != "Destroy":
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only destroyed volumes can be recovered")
    if not vol.pool_id and (vol.details or {}).get("upload") and not vol.size:
        raise InvalidParameter(f"Volume {vol.name} never finished its upload, so there is nothing to recover; "
                               "upload the file again as a new volume")
    event = "RecoverRequested" if vol.pool_id else "RecoverUploaded" if (vol.details or {}).get("upload") \
        else "RecoverAllocated"
    VOLUME.fire(s, vol, event, destroyed_at=None)
    events.record(s, ctx, "VOLUME.RECOVER", f"Volume {vol.name} recovered", resource_type="Volume", resource_uuid=vol.uuid)
    return vol


def expunge_volume(s, ctx, vol: Volume) -> None:
    if vol.pool_id:
        reconcile.check_not_open(s, vol, None, "delete")
        pool = s.get(StoragePool, vol.pool_id)
        host = _host_for_pool(s, pool)
        begin_host_work(s, vol, "ExpungingRequested")
        try:
            driver_for(pool.provider).delete_volume(channel(host), pool, vol)
        except CloudError as exc:
            host_work_failed(s, vol, exc, error=f"expunge failed: {exc.text}")
    else:
        VOLUME.fire(s, vol, "ExpungingRequested")
    for hook in expunge_hooks:          # copies elsewhere, e.g. an uploaded volume's file on an image store
        hook(s, vol)
    VOLUME.fire(s, vol, "OperationSucceeded", removed=utcnow(), vm_id=None)    # its passphrase goes (encryption)
    events.record(s, ctx, "VOLUME.EXPUNGE", f"Volume {vol.name} expunged", resource_type="Volume", resource_uuid=vol.uuid)


def delete(s, ctx, vol: Volume) -> None:
    """deleteVolume: remove an unattached data volume at once."""
    if vol.vm_id is not None:
        raise InvalidParameter(f"Volume {vol.name} is attached to a VM; detach it first")     # as CloudStack: 431
    if vol.state not in ("Allocated", "Ready", "Destroy", "Uploaded", "UploadError", "UploadAbandoned"):
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; wait for its operation to finish")
    if vol.state != "Destroy":
        VOLUME.fire(s, vol, "DestroyRequested", destroyed_at=utcnow())
    expunge_volume(s, ctx, vol)


def expunge_destroyed(db, ctx) -> int:
    """The storage cleanup task: expunge volumes destroyed longer than storage.cleanup.delay ago."""
    from datetime import timedelta
    with db.session(readonly=True) as s:
        delay = S.Settings.value_in(s, S.STORAGE_CLEANUP_DELAY)
        ids = list(s.scalars(select(Volume.id).where(Volume.state == "Destroy", _live(Volume),
                                                     Volume.destroyed_at < utcnow() - timedelta(seconds=delay))))
    for vid in ids:
        with db.session() as s:
            try:
                expunge_volume(s, ctx, s.get(Volume, vid))
            except CloudError:
                pass
    return len(ids)


def _reapply_qos(s, ctx, offering) -> None:
    """A disk offering's rates changed: re-apply them online to every running guest using it."""
    from volstack.drivers.default import serial_of
    qos = offerings.qos_of(offering, s)
    for vol in s.scalars(select(Volume).where(Volume.disk_offering_id == offering.id, _live(Volume),
                                              Volume.state == "Ready", Volume.vm_id.isnot(None))):
        vm = s.get(VirtualMachine, vol.vm_id)
        if vm.state == "Running":
            channel(s.get(Host, vm.host_id)).call("disk_set_qos", vm=vm.uuid, serial=serial_of(vol), qos=qos)


offerings.register_qos_listener(_reapply_qos)


def settle_interrupted(db, ctx, volume_uuid: str, cmd: str) -> None:
    with db.session() as s:
        vol = s.scalar(select(Volume).where(Volume.uuid == volume_uuid))
        if vol is not None:
            settle(s, ctx, vol, cmd)


# Transitional states a job moves a volume through, and where it goes back when nobody finishes the work.
SETTLE_BACK = {"Creating": "Allocated", "Migrating": "Ready", "Resizing": "Ready", "Attaching": "Ready",
               "Snapshotting": "Ready", "RevertSnapshotting": "Ready", "Expunging": "Destroy", "Copying": "Uploaded"}


def settle(s, ctx, vol: Volume, cmd: str, reason: str | None = None) -> None:
    """A job on this volume died with its management server, failed, or left it transitional: bring the volume
    back to a stable state with the reason (the host side removes half-made copies itself; a move asks the
    host what happened)."""
    back = SETTLE_BACK
    if vol.state not in back:
        return
    reason = reason or f"{cmd} was interrupted because the management server running it stopped"
    if vol.state == "Migrating" and (vol.details or {}).get("migrating_to"):
        from volstack.services import volume_migration
        return volume_migration.settle(s, ctx, vol, reason)
    if vol.state in ("Creating", "Copying"):
        _remove_half_made(s, vol)
        vol.pool_id = None
    vol.state, vol.error = back[vol.state], reason
    events.record(s, ctx, "VOLUME.RECOVER", f"Volume {vol.name}: {reason}; it is {vol.state} again",
                  level="WARN", resource_type="Volume", resource_uuid=vol.uuid)


def _remove_half_made(s, vol: Volume) -> None:
    """A volume going back to where it has no image: what its creation may have made on the pool is removed (it
    holds nothing yet; the next start or attach makes it again), else it would belong to nothing. Best effort:
    the orphan scan removes what a host could not."""
    pool = s.get(StoragePool, vol.pool_id) if vol.pool_id else None
    if pool is None or not vol.path:
        return
    from volstack.services.pools import hosts_in_scope
    hosts = hosts_in_scope(s, pool)
    if not hosts:
        return
    ch, image = channel(hosts[0]), Volume(uuid=vol.uuid, path=vol.path, format=vol.format)
    s.commit()                     # no transaction open while the host works
    try:
        driver_for(pool.provider).delete_volume(ch, pool, image)
    except CloudError:
        pass


# ---------------------------------------------------------------- statistics (listVolumesMetrics)

def collect_stats(db) -> None:
    """Block statistics of every attached volume of running guests, from their hosts."""
    from volstack.db.storage_models import VolumeStats
    from volstack.drivers.default import serial_of
    with db.session(readonly=True) as s:
        running = [(vm.uuid, vm.id, vm.host_id) for vm in s.scalars(
            select(VirtualMachine).where(VirtualMachine.state == "Running", VirtualMachine.host_id.isnot(None)))]
    for vm_uuid, vm_id, host_id in running:
        with db.session() as s:
            try:
                disks = channel(s.get(Host, host_id)).call("disk_stats", vm=vm_uuid)["disks"]
            except CloudError:
                continue
            now = utcnow()
            for vol in s.scalars(select(Volume).where(Volume.vm_id == vm_id, _live(Volume))):
                st = disks.get(serial_of(vol))
                if st is None:
                    continue
                row = s.get(VolumeStats, vol.id) or VolumeStats(volume_id=vol.id)
                ops = st["rd_ops"] + st["wr_ops"]
                if row.collected is not None and ops >= row.read_ops + row.write_ops:
                    elapsed = max((now - row.collected).total_seconds(), 0.001)
                    row.iops_total = (ops - row.read_ops - row.write_ops) / elapsed
                row.read_ops, row.write_ops = st["rd_ops"], st["wr_ops"]
                row.read_bytes, row.write_bytes, row.collected = st["rd_bytes"], st["wr_bytes"], now
                s.add(row)


# ---------------------------------------------------------------- offering changes, import/unmanage

def change_offering(s, ctx, vol: Volume, *, diskofferingid, size_gb=None, shrinkok=False, miniops=None, maxiops=None,
                    automigrate=False, progress=None) -> Volume:
    """changeOfferingForVolume: new offering, resized and/or moved as the new offering needs."""
    new = offerings.get_disk_offering(s, ctx, diskofferingid, zone_id=vol.zone_id)
    if vol.state == "Ready" and vol.pool_id and S.Settings.value_in(s, S.MATCH_POOL_TAGS, zone=vol.zone_id):
        pool = s.get(StoragePool, vol.pool_id)
        if not allocator.tags_match(pool, allocator.offering_tags(new)):
            if not automigrate:
                raise InvalidParameter(f"Storage pool {pool.name} does not carry the tags of disk offering {new.name} "
                                       "(match.storage.pool.tags.with.disk.offering=true); pass automigrate=true "
                                       "to move the volume to a pool that does")
            vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
            host = s.get(Host, vm.host_id) if vm is not None and vm.state == "Running" else None
            target = allocator.choose(s, zone_id=vol.zone_id, size=vol.size, offering=new,
                                      hypervisor=vol.hypervisor or "KVM", host=host, account_id=vol.account_id,
                                      exclude=(pool.id,))
            from volstack.services.volume_migration import migrate
            migrate(s, ctx, vol, target, livemigrate=host is not None, progress=progress)
    target_size = offerings.disk_size_for(new, size_gb, s=s) if (size_gb is not None or not new.customized) else vol.size
    if target_size != vol.size:
        resize(s, ctx, vol, size_gb=target_size // GIB, shrinkok=shrinkok)
    vol.disk_offering_id = new.id
    vol.min_iops, vol.max_iops = offerings.storage_iops_for(new, miniops, maxiops, s=s)
    vm = s.get(VirtualMachine, vol.vm_id) if vol.vm_id else None
    if vm is not None and vm.state == "Running" and vol.state == "Ready":
        from volstack.drivers.default import serial_of
        ch, qos = channel(s.get(Host, vm.host_id)), offerings.qos_of(new, s)
        s.commit()
        ch.call("disk_set_qos", vm=vm.uuid, serial=serial_of(vol), qos=qos)
    events.record(s, ctx, "VOLUME.UPDATE", f"Volume {vol.name} now uses disk offering {new.name}",
                  resource_type="Volume", resource_uuid=vol.uuid)
    return vol


def unmanaged_images(s, ctx, pool: StoragePool, path: str | None = None) -> list[dict]:
    """listVolumesForImport: image files on the pool that no volstack volume owns."""
    from volstack.services.pools import list_objects
    return [e for e in list_objects(s, ctx, pool.uuid, path)
            if not e["isdirectory"] and not any(e.get(k) for k in ("volumeid", "templateid", "snapshotid"))]


def import_volume(s, ctx, pool: StoragePool, path: str, *, name=None, diskofferingid=None) -> Volume:
    from volstack.services.context import require_root_admin
    require_root_admin(ctx)
    if "/" in path or path in ("", ".", ".."):
        raise InvalidParameter(f"Give the image's file name in the pool root, not {path!r}")
    if s.scalar(select(Volume.id).where(Volume.pool_id == pool.id, Volume.path == path, _live(Volume))):
        raise InvalidParameter(f"{path} on {pool.name} is already managed by volstack")
    host = _host_for_pool(s, pool)
    # the one probe of this file's format (nobody recorded it): links, backing and data files are refused (431)
    info = channel(host).call("volume_import_check", pool=driver_for(pool.provider).spec(pool), name=path)
    offering = offerings.get_disk_offering(s, ctx, diskofferingid) if diskofferingid else None
    vol = Volume(name=name or path, volume_type="DATADISK", state="Ready", size=info["size"],
                 physical_size=info.get("physical_size"), format=info["format"].upper(), path=path,
                 zone_id=pool.zone_id, pool_id=pool.id, account_id=ctx.account_id, domain_id=ctx.domain_id,
                 disk_offering_id=offering.id if offering else None, hypervisor=host.hypervisor)
    limits.check_limit(s, ctx.account_id, "volume")
    s.add(vol)
    s.flush()
    events.record(s, ctx, "VOLUME.IMPORT", f"Image {path} on {pool.name} imported as volume {vol.name}",
                  resource_type="Volume", resource_uuid=vol.uuid)
    return vol


def unmanage(s, ctx, vol: Volume) -> None:
    """unmanageVolume: forget the volume, keep its image on the pool."""
    from volstack.services.context import require_root_admin
    require_root_admin(ctx)
    if vol.vm_id is not None:
        raise InvalidParameter(f"Volume {vol.name} is attached to a VM; detach it first")     # as CloudStack: 431
    if vol.state != "Ready":
        raise InvalidParameter(f"Volume {vol.name} is {vol.state}; only Ready volumes can be unmanaged")
    vol.state, vol.removed = "Expunged", utcnow()
    events.record(s, ctx, "VOLUME.UNMANAGE", f"Volume {vol.name} unmanaged; its image {vol.path} stays on the pool",
                  resource_type="Volume", resource_uuid=vol.uuid)
