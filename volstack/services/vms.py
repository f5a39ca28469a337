"""Virtual machines, only as much as storage needs: a ROOT volume, data disks, start/stop on a host."""
import uuid

from sqlalchemy import func, select

from volstack.db.models import Cluster, Host, utcnow
from volstack.db.storage_models import DiskOffering, ServiceOffering, StoragePool, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, InsufficientCapacity, InvalidParameter, ResourceInUse
from volstack.services import encryption, events, infra, lookup, offerings, volume_migration, volumes
from volstack.services import settings as S
from volstack.services.context import check_access, owner_filter
from volstack.services.lifecycle import VM, VOLUME
from volstack.services.listing import ListQuery, identity_filter, keyword_filter, paginate

lookup.register_entity("VirtualMachine", VirtualMachine)
GIB = 1024 ** 3


def get_vm(s, ctx, uuid) -> VirtualMachine:
    vm = s.scalar(select(VirtualMachine).where(VirtualMachine.uuid == uuid, VirtualMachine.removed.is_(None)))
    if vm is None:
        raise InvalidParameter(f"Unable to find virtual machine by id {uuid}")
    check_access(s, ctx, vm.account_id, "virtual machine")
    return vm


def deploy(s, ctx, *, zoneid, serviceofferingid, name=None, displayname=None, diskofferingid=None, size=None,
           rootdisksize=None, hostid=None, startvm=True, hypervisor=None, details=None, templateid=None) -> VirtualMachine:
    zone = infra.get_zone(s, zoneid)
    so = offerings.get_service_offering(s, ctx, serviceofferingid)
    root_offering = s.get(DiskOffering, so.disk_offering_id)
    if so.root_disk_size and rootdisksize is not None and rootdisksize * GIB != so.root_disk_size:
        raise InvalidParameter(f"Service offering {so.name} sets the root disk size ({so.root_disk_size // GIB} GB); "
                               "rootdisksize cannot override it")
    root_bytes = so.root_disk_size or (rootdisksize * GIB if rootdisksize else 0)
    template = template_for_deploy(s, ctx, templateid, zone, root_bytes) if templateid else None
    iso = template if template is not None and template.format == "ISO" else None
    if iso is not None:
        # as CloudStack: the disk offering (and size, for a custom one) makes the blank ROOT disk the ISO installs on
        if not diskofferingid:
            raise InvalidParameter(f"Installing from ISO {iso.name} requires a disk offering for the root disk: pass "
                                   "diskofferingid (and size in GB for a custom offering)")
        root_offering = offerings.get_disk_offering(s, ctx, diskofferingid)
        root_bytes = max(offerings.disk_size_for(root_offering, size, s=s), rootdisksize * GIB if rootdisksize else 0)
        diskofferingid = None     # no data disk: the offering was the root's
    elif template is not None:
        root_bytes = max(root_bytes, template.size or 0)
    if root_bytes <= 0 and template is not None and iso is None:
        root_bytes = 0            # sized from the template when its first copy is fetched (direct download)
    elif root_bytes <= 0:
        raise InvalidParameter("Pass rootdisksize (GB): there is no template to take the root disk size from and the "
                               f"service offering {so.name} sets none")
    hv = infra.hypervisor_name(hypervisor) if hypervisor else _zone_hypervisor(s, zone.id)
    # unnamed VMs get a unique name (a time+random name collided for two deploys in one second)
    name = name or f"i-{uuid.uuid4().hex[:12]}"
    if s.scalar(select(VirtualMachine.id).where(VirtualMachine.name == name, VirtualMachine.account_id == ctx.account_id,
                                                VirtualMachine.removed.is_(None))):
        raise InvalidParameter(f"A VM named {name} already exists in your account")
    if details:
        unknown = set(details) - {"kernel", "initrd", "append"}
        if unknown:
            raise InvalidParameter(f"Unknown VM details {', '.join(sorted(unknown))}: use kernel, initrd, append")
        if not ctx.is_root_admin:
            raise InvalidParameter("Only the root administrator may set a VM's boot kernel (host paths)")
    vm = VirtualMachine(name=name, display_name=displayname or name, zone_id=zone.id, service_offering_id=so.id,
                        account_id=ctx.account_id, domain_id=ctx.domain_id, hypervisor=hv, details=dict(details or {}),
                        template_id=template.id if template else None, iso_id=iso.id if iso else None)
    s.add(vm)
    s.flush()
    root = volumes.new_volume(s, ctx, name=f"ROOT-{vm.id}", zone_id=zone.id, size=root_bytes, offering=root_offering,
                              volume_type="ROOT", hypervisor=hv)
    root.vm_id, root.device_id = vm.id, 0
    if template is not None and iso is None:
        root.template_id = template.id
    if diskofferingid:
        do = offerings.get_disk_offering(s, ctx, diskofferingid)
        data = volumes.new_volume(s, ctx, name=f"DATA-{vm.id}", zone_id=zone.id,
                                  size=offerings.disk_size_for(do, size, s=s), offering=do, hypervisor=hv)
        data.vm_id, data.device_id = vm.id, 1
    events.record(s, ctx, "VM.CREATE", f"VM {name} created", resource_type="VirtualMachine", resource_uuid=vm.uuid)
    if startvm:
        start(s, ctx, vm, hostid)
    return vm


def template_for_deploy(s, ctx, templateid, zone, root_bytes):
    """The template (or ISO) a VM is deployed from: usable by the caller, ready in the zone, and not larger
    than an explicitly asked root size."""
    from volstack.services import templates
    t = templates.get_template(s, ctx, templateid)
    templates.check_ready(s, t, zone)
    if t.format != "ISO" and root_bytes and t.size and root_bytes < t.size:
        raise InvalidParameter(f"The root disk size ({root_bytes // GIB} GB) is smaller than template {t.name} "
                               f"({-(-t.size // GIB)} GB); rootdisksize can only grow it")
    if t.format == "ISO" and not t.bootable:
        raise InvalidParameter(f"ISO {t.name} is not bootable; deploy from a bootable ISO or a template")
    return t


def _boot(s, vm) -> str | None:
    """A VM with host kernel details boots the kernel. Otherwise a bootable ISO in its CD drive boots first
    (as CloudStack's KVM boot order: CD, then hard disk), then the root disk of a VM from a template or an
    ISO; a VM with neither has nothing to boot."""
    if (vm.details or {}).get("kernel"):
        return None
    from volstack.db.image_models import Template
    iso = s.get(Template, vm.iso_id) if vm.iso_id else None
    if iso is not None and iso.bootable:
        return "cdrom"
    return "disk" if vm.template_id else None


def _zone_hypervisor(s, zone_id) -> str:
    hv = s.scalar(select(Cluster.hypervisor).where(Cluster.zone_id == zone_id).order_by(Cluster.id))
    return hv or "KVM"


def _hosts_for(s, vm, hostid=None) -> list[Host]:
    stmt = select(Host).where(Host.zone_id == vm.zone_id, Host.state == "Up", Host.resource_state == "Enabled",
                              Host.hypervisor == vm.hypervisor)
    if hostid:
        stmt = stmt.where(Host.uuid == hostid)
    hosts = list(s.scalars(stmt.order_by(Host.id)))
    # a VM with a volume on host-local storage is pinned to that host
    local = s.scalar(select(StoragePool.host_id).join(Volume, Volume.pool_id == StoragePool.id)
                     .where(Volume.vm_id == vm.id, Volume.removed.is_(None), StoragePool.scope == "HOST"))
    if local is not None:
        hosts = [h for h in hosts if h.id == local]
    elif vm.last_host_id and not hostid:
        hosts.sort(key=lambda h: h.id != vm.last_host_id)
    return hosts


def start(s, ctx, vm, hostid=None) -> VirtualMachine:
    busy = [f"{v.name} is {v.state}" for v in s.scalars(select(Volume).where(
        Volume.vm_id == vm.id, Volume.removed.is_(None), Volume.state.in_(("Snapshotting", "RevertSnapshotting"))))]
    if busy:       # a snapshot being backed up or a revert rewriting the image must finish first
        raise InvalidParameter(f"VM {vm.name} cannot start while its volume {', '.join(busy)}; wait for the "
                               "snapshot operation to finish")
    in_maint = [(v.name, p.name, p.state) for v, p in s.execute(select(Volume, StoragePool).join(
        StoragePool, StoragePool.id == Volume.pool_id).where(Volume.vm_id == vm.id, Volume.removed.is_(None),
        StoragePool.state.in_(("PrepareForMaintenance", "Maintenance", "ErrorInMaintenance"))))]
    if in_maint:   # the pool's data may be moving or its storage down: the guest must not open it
        raise InvalidParameter(f"VM {vm.name} cannot start: " + "; ".join(
            f"its volume {v} is on storage pool {p}, which is in {st}" for v, p, st in in_maint)
            + "; cancel the maintenance (cancelStorageMaintenance) or migrate the volume first")
    hosts = _hosts_for(s, vm, hostid)
    if not hosts:
        raise InsufficientCapacity(f"No Up, Enabled {vm.hypervisor} host in the zone can run VM {vm.name}"
                                   + (" (its local volumes pin it to a host that is not available)" if vm.last_host_id else ""))
    VM.fire(s, vm, "StartRequested")
    s.commit()      # Starting is committed before any host work: reconciliation then never takes the guest for stale
    errors = []
    for host in hosts:
        try:
            adopted = _start_on(s, ctx, vm, host)
            VM.fire(s, vm, "OperationSucceeded", host_id=host.id, last_host_id=host.id)
            events.record(s, ctx, "VM.START", f"VM {vm.name} started on host {host.name}" + (
                          " (the host was still running it with exactly these disks: the guest was adopted, not "
                          "restarted)" if adopted else ""), resource_type="VirtualMachine", resource_uuid=vm.uuid)
            return vm
        except CloudError as exc:
            errors.append(f"{host.name}: {exc.text}")
    VM.fire(s, vm, "OperationFailed")
    s.commit()      # the raise below rolls back the job's session: the VM must not stay Starting
    raise InsufficientCapacity(f"VM {vm.name} could not start on any host: " + "; ".join(errors))


def _start_on(s, ctx, vm, host) -> None:
    vols = list(s.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None)).order_by(Volume.device_id)))
    for vol in vols:
        if vol.state in volumes.NOT_ON_PRIMARY:
            volumes.realize(s, ctx, vol, host)
    so = s.get(ServiceOffering, vm.service_offering_id)
    disks = []
    for vol in vols:
        pool = s.get(StoragePool, vol.pool_id)
        disks.append(driver_for(pool.provider).disk(pool, vol, vol.device_id, volumes.qos_for(s, vol),
                                                    encryption.spec(s, vol)))
    from volstack.services import isos
    cdrom = isos.medium_at_start(s, ctx, vm, host)
    spec = dict(name=vm.uuid, uuid=vm.uuid, memory_mb=so.ram_size or 256, cpus=so.cpu or 1,
                kernel=(vm.details or {}).get("kernel"), initrd=(vm.details or {}).get("initrd"),
                append=(vm.details or {}).get("append"), disks=disks, boot=_boot(s, vm), cdrom=cdrom)
    s.commit()
    try:
        return bool(channel(host).call("vm_start", **spec).get("adopted"))
    except ResourceInUse as exc:
        if "is already running on host" not in exc.text:
            raise
        refusal = exc.text
    # The host still runs an earlier guest of this VM with other disks (a stop it never received): that guest
    # is stale, since the database recorded the VM stopped. Stop it, say so, and start the VM as recorded.
    channel(host).call("vm_stop", name=vm.uuid, forced=True)
    events.record(s, ctx, "VM.STOP", f"VM {vm.name}: host {host.name} was still running an earlier guest of it "
                  f"({refusal}); that guest was stopped before the start", level="WARN",
                  resource_type="VirtualMachine", resource_uuid=vm.uuid)
    s.commit()
    return bool(channel(host).call("vm_start", **spec).get("adopted"))


def stop(s, ctx, vm, forced=False) -> VirtualMachine:
    if vm.state == "Stopped":
        return vm
    host = s.get(Host, vm.host_id)
    VM.fire(s, vm, "StopRequested")
    s.commit()          # Stopping is recorded; a guest's shutdown (seconds, or minutes) holds no database lock
    try:
        channel(host).call("vm_stop", name=vm.uuid, forced=bool(forced))
    except CloudError:
        if not forced:
            VM.fire(s, vm, "OperationFailed")
            s.commit()
            raise
    VM.fire(s, vm, "OperationSucceeded", host_id=None)
    events.record(s, ctx, "VM.STOP", f"VM {vm.name} stopped", resource_type="VirtualMachine", resource_uuid=vm.uuid)
    return vm


def reboot(s, ctx, vm) -> VirtualMachine:
    if vm.state != "Running":
        raise InvalidParameter(f"VM {vm.name} is {vm.state}; only a Running VM can be rebooted")
    so = s.get(ServiceOffering, vm.service_offering_id)
    if so.is_volatile:        # the root disk is discarded and made anew on every reboot
        host = s.get(Host, vm.host_id)
        stop(s, ctx, vm, forced=True)
        root = s.scalar(select(Volume).where(Volume.vm_id == vm.id, Volume.volume_type == "ROOT", Volume.removed.is_(None)))
        pool = s.get(StoragePool, root.pool_id)
        drv = driver_for(pool.provider)
        drv.delete_volume(channel(host), pool, root)
        drv.create_volume(channel(host), pool, root, encryption=encryption.spec(s, root))
        start(s, ctx, vm, host.uuid)
        events.record(s, ctx, "VM.REBOOT", f"VM {vm.name} rebooted with a fresh root disk (volatile offering)",
                      resource_type="VirtualMachine", resource_uuid=vm.uuid)
        return vm
    host = s.get(Host, vm.host_id)
    s.commit()
    channel(host).call("vm_reboot", name=vm.uuid)
    events.record(s, ctx, "VM.REBOOT", f"VM {vm.name} rebooted", resource_type="VirtualMachine", resource_uuid=vm.uuid)
    return vm


def destroy(s, ctx, vm, expunge=False, volumeids=()) -> VirtualMachine:
    """The ROOT volume goes with the VM; data disks are detached and survive unless listed in volumeids."""
    for uuid in volumeids:       # each one the caller's and this VM's data disk: never silently skipped
        vol = volumes.get_volume(s, ctx, uuid)
        if vol.vm_id != vm.id or vol.volume_type == "ROOT":
            raise InvalidParameter(f"Volume {vol.name} is not a data volume attached to VM {vm.name}: volumeids "
                                   "lists the VM's data volumes to delete with it")
    if vm.state == "Running":
        stop(s, ctx, vm, forced=True)
    for vol in s.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None))):
        if vol.volume_type == "ROOT":
            VOLUME.fire(s, vol, "DestroyRequested", destroyed_at=utcnow())
        else:
            vol.vm_id, vol.device_id, vol.attached = None, None, None
            if vol.uuid in volumeids:
                volumes.destroy(s, ctx, vol, expunge=expunge)
    VM.fire(s, vm, "DestroyRequested", destroyed_at=utcnow())
    events.record(s, ctx, "VM.DESTROY", f"VM {vm.name} destroyed", resource_type="VirtualMachine", resource_uuid=vm.uuid)
    if expunge:
        expunge_vm(s, ctx, vm)
    return vm


def recover(s, ctx, vm) -> VirtualMachine:
    VM.fire(s, vm, "RecoveryRequested", destroyed_at=None)
    for vol in s.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.state == "Destroy", Volume.removed.is_(None))):
        volumes.recover(s, ctx, vol)
    events.record(s, ctx, "VM.RECOVER", f"VM {vm.name} recovered", resource_type="VirtualMachine", resource_uuid=vm.uuid)
    return vm


# hook(s, ctx, vm) while a VM is expunged, before its volumes go: what else it owns (e.g. its VM snapshots).
expunge_hooks: list = []


def expunge_vm(s, ctx, vm) -> None:
    if vm.state != "Destroyed":
        raise InvalidParameter(f"VM {vm.name} is {vm.state}; destroy it before expunging")
    VM.fire(s, vm, "ExpungeRequested")
    try:
        for hook in expunge_hooks:
            hook(s, ctx, vm)
        for vol in list(s.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None)))):
            volumes.expunge_volume(s, ctx, vol)
    except CloudError:
        VM.fire(s, vm, "OperationFailed")       # back to Destroyed (committed: volume work commits too)
        s.commit()
        raise
    VM.fire(s, vm, "OperationSucceeded", removed=utcnow())
    events.record(s, ctx, "VM.EXPUNGE", f"VM {vm.name} expunged", resource_type="VirtualMachine", resource_uuid=vm.uuid)


def expunge_destroyed(db, ctx) -> int:
    """The expunge task (every expunge.interval): expunge VMs destroyed longer than expunge.delay ago.
    A VM whose expunge fails stays Destroyed and is tried again on the next round."""
    from datetime import timedelta
    with db.session(readonly=True) as s:
        delay = S.Settings.value_in(s, S.EXPUNGE_DELAY)
        ids = list(s.scalars(select(VirtualMachine.id).where(
            VirtualMachine.state == "Destroyed", VirtualMachine.removed.is_(None),
            VirtualMachine.destroyed_at < utcnow() - timedelta(seconds=delay))))
    done = 0
    for vid in ids:
        with db.session() as s:
            vm = s.get(VirtualMachine, vid)
            try:
                expunge_vm(s, ctx, vm)
                done += 1
            except CloudError as exc:
                s.rollback()
                events.record(s, ctx, "VM.EXPUNGE", f"VM {vm.name} could not be expunged yet: {exc.text}",
                              level="WARN", resource_type="VirtualMachine", resource_uuid=vm.uuid)
    return done


def list_vms(s, ctx, q: ListQuery, **f):
    stmt = select(VirtualMachine).where(VirtualMachine.removed.is_(None),
                                        *owner_filter(s, ctx, VirtualMachine, listall=q.listall, isrecursive=q.isrecursive,
                                                      account=q.account, domain_uuid=q.domainid)).order_by(VirtualMachine.id)
    stmt = stmt.where(*identity_filter(VirtualMachine, f))
    if f.get("state"):
        stmt = stmt.where(func.lower(VirtualMachine.state) == f["state"].lower())
    if f.get("zoneid"):
        stmt = stmt.where(VirtualMachine.zone_id == infra.get_zone(s, f["zoneid"]).id)
    if f.get("hostid"):
        stmt = stmt.where(VirtualMachine.host_id == infra.get_host(s, f["hostid"]).id)
    if f.get("storageid"):
        stmt = stmt.where(VirtualMachine.id.in_(select(Volume.vm_id).join(StoragePool, StoragePool.id == Volume.pool_id)
                                                .where(StoragePool.uuid == f["storageid"])))
    for key, column in (("isoid", VirtualMachine.iso_id), ("templateid", VirtualMachine.template_id)):
        if f.get(key):
            from volstack.db.image_models import Template
            stmt = stmt.where(column == select(Template.id).where(Template.uuid == f[key]).scalar_subquery())
    stmt = stmt.where(*keyword_filter(q, VirtualMachine.name, VirtualMachine.display_name))
    return paginate(s, stmt, q)


# ---------------------------------------------------------------- pool maintenance stops and restarts guests

def _vms_on_pool(s, pool, state):
    return list(s.scalars(select(VirtualMachine).where(VirtualMachine.state == state, VirtualMachine.removed.is_(None),
                                                       VirtualMachine.id.in_(select(Volume.vm_id).where(
                                                           Volume.pool_id == pool.id, Volume.removed.is_(None))))))


def _stop_for_maintenance(s, ctx, pool) -> None:
    for vm in _vms_on_pool(s, pool, "Running"):
        stop(s, ctx, vm)
        vm.details = {**(vm.details or {}), "stopped_for_maintenance_of": pool.uuid}


def _restart_after_maintenance(s, ctx, pool) -> None:
    for vm in _vms_on_pool(s, pool, "Stopped"):
        details = dict(vm.details or {})
        if details.pop("stopped_for_maintenance_of", None) == pool.uuid:
            vm.details = details
            try:
                start(s, ctx, vm)
            except CloudError as exc:
                events.record(s, ctx, "VM.START", f"VM {vm.name} could not restart after maintenance of "
                              f"{pool.name}: {exc.text}", level="ERROR", resource_type="VirtualMachine",
                              resource_uuid=vm.uuid)


def _register_pool_hooks():
    from volstack.services import pools
    pools.maintenance_hooks.append(_stop_for_maintenance)
    pools.cancel_maintenance_hooks.append(_restart_after_maintenance)


_register_pool_hooks()


def settle_interrupted(db, ctx, vm_uuid: str, cmd: str) -> None:
    """A job on this VM died with its management server: ask its host what is true and record that."""
    with db.session() as s:
        vm = s.scalar(select(VirtualMachine).where(VirtualMachine.uuid == vm_uuid))
        if vm is not None:
            settle(s, ctx, vm, f"{cmd} was interrupted by a management server stop")


# settle(): the event of VM's table that takes a transitional state to what the host reports
_SETTLED_BY = {"Starting": {"Running": "OperationSucceeded", "Stopped": "OperationFailed"},
               "Stopping": {"Stopped": "OperationSucceeded", "Running": "OperationFailed"},
               "Migrating": {"Running": "AgentReportRunning", "Stopped": "AgentReportStopped"}}


def settle(s, ctx, vm, reason: str) -> None:
    """Bring a VM (and its volumes caught mid-move) back to a stable state after its job died or failed, or when
    nothing works on it any more: the host says whether the guest runs; a guest found running after a start is
    adopted only with the disks the database records (else stopped)."""
    # migrateVirtualMachineWithVolume moves volumes before the VM: one may be mid-move (the VM still Running)
    for vol in s.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.state == "Migrating",
                                              Volume.removed.is_(None))):
        volumes.settle(s, ctx, vol, "", reason=reason)
    if vm.state == "Expunging":
        VM.fire(s, vm, "OperationFailed")                    # → Destroyed
        events.record(s, ctx, "VM.RECOVER", f"VM {vm.name}: {reason}; it is Destroyed again (expunge it again)",
                      level="WARN", resource_type="VirtualMachine", resource_uuid=vm.uuid)
        return
    if vm.state not in ("Starting", "Stopping", "Migrating"):
        return
    if vm.state == "Migrating" and (vm.details or {}).get("migrating_to"):
        from volstack.services import vm_migration
        state = vm_migration.settle(s, ctx, vm)
        events.record(s, ctx, "VM.RECOVER", f"VM {vm.name}: {reason}; the hosts report it {state}", level="WARN",
                      resource_type="VirtualMachine", resource_uuid=vm.uuid)
        return
    from volstack.services import reconcile
    host = s.get(Host, vm.host_id or vm.last_host_id) if (vm.host_id or vm.last_host_id) else None
    running, note = False, ""
    if host is not None:
        s.commit()
        try:
            guest = channel(host).call("vm_list")["vms"]
            guest = next((g for g in guest if g["name"] == vm.uuid), None)
            running = guest is not None and guest["state"] == "Running"
            if running and vm.state == "Starting" and \
                    reconcile.diagnose(s, host, vm.uuid, guest)[0][0] == "interrupted_start_other_disks":
                s.commit()
                channel(host).call("vm_stop", name=vm.uuid, forced=True)
                running, note = False, " (its guest there had other disks than recorded and was stopped)"
        except CloudError:
            running = vm.state == "Stopping"
    VM.fire(s, vm, _SETTLED_BY[vm.state]["Running" if running else "Stopped"], host_id=host.id if running else None)
    events.record(s, ctx, "VM.RECOVER", f"VM {vm.name}: {reason}; the host reports it {vm.state}{note}",
                  level="WARN", resource_type="VirtualMachine", resource_uuid=vm.uuid)


def migrate(s, ctx, vm, *, hostid=None, storageid=None, volume_map=None, progress=None) -> VirtualMachine:
    """migrateVirtualMachine / migrateVirtualMachineWithVolume.

    Volumes move with migrateVolume's machinery (cold copy, or QEMU's mirror while the guest runs).
    A running guest moves to another host by live migration (services/vm_migration.py); without a
    host (and nothing else to do) one that reaches all its disks is picked."""
    from volstack.services import vm_migration
    from volstack.services.pools import get_pool
    if vm.state not in ("Running", "Stopped"):
        raise InvalidParameter(f"VM {vm.name} is {vm.state}; only Running or Stopped VMs can be migrated")
    target_host = infra.get_host(s, hostid) if hostid else None
    if target_host is not None:
        if target_host.zone_id != vm.zone_id or target_host.hypervisor != vm.hypervisor:
            raise InvalidParameter(f"Host {target_host.name} cannot run VM {vm.name} (other zone or hypervisor)")
    if vm.state == "Running" and not storageid and (target_host is None and not volume_map
                                                     or target_host is not None and target_host.id != vm.host_id):
        mapping = {}
        for vol_uuid, pool_uuid in (volume_map or {}).items():
            vol = s.scalar(select(Volume).where(Volume.uuid == vol_uuid, Volume.vm_id == vm.id,
                                                Volume.removed.is_(None)))
            if vol is None:
                raise InvalidParameter(f"Volume {vol_uuid} is not attached to VM {vm.name}")
            mapping[vol] = get_pool(s, pool_uuid)
        return vm_migration.live_migrate(s, ctx, vm, target_host, mapping, progress)
    moves = []
    vols = list(s.scalars(select(Volume).where(Volume.vm_id == vm.id, Volume.removed.is_(None))))
    if storageid:
        if vm.state == "Running":
            raise InvalidParameter("storageid moves the storage of a stopped VM; for a running VM use "
                                   "migrateVirtualMachineWithVolume or migrateVolume with livemigrate=true")
        pool = get_pool(s, storageid)
        moves = [(v, pool) for v in vols if v.pool_id not in (None, pool.id)]
    for vol_uuid, pool_uuid in (volume_map or {}).items():
        vol = next((v for v in vols if v.uuid == vol_uuid), None)
        if vol is None:
            raise InvalidParameter(f"Volume {vol_uuid} is not attached to VM {vm.name}")
        moves.append((vol, get_pool(s, pool_uuid)))
    for vol, pool in moves:          # refuse before the first volume moves, not after
        volume_migration.check(s, vol, pool, livemigrate=vm.state == "Running")
    for vol, pool in moves:
        volume_migration.migrate(s, ctx, vol, pool, livemigrate=vm.state == "Running", progress=progress)
    if target_host is not None and vm.state == "Stopped":
        vm.last_host_id = target_host.id
    events.record(s, ctx, "VM.MIGRATE", f"VM {vm.name} migrated" + (f" to host {target_host.name}" if target_host else "")
                  + (f" with {len(moves)} volume(s)" if moves else ""), resource_type="VirtualMachine",
                  resource_uuid=vm.uuid)
    return vm
