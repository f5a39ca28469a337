"""changeServiceForVirtualMachine and scaleVirtualMachine: a VM moves to another service offering.

The ROOT volume follows the service offering root-disk-size table (seed 004):

    current root size   new root size   allowed?
    0 (not enforced)    any             yes
    5 GB                5 GB / 10 GB    yes (grown to 10 GB)
    10 GB               5 GB            no: a service offering change never shrinks the root disk
    any                 0               yes, the root disk keeps its size (0 does not enforce one)

The root volume takes the new offering's disk side (its tags, storage type and QoS); with automigrate it
moves to a pool that suits them, otherwise a mismatch is refused. A stopped VM may change anything.
A running VM may change only through scaleVirtualMachine and only the storage side (volstack does not
hot-plug CPUs or memory): the new QoS is applied online and a larger root disk grows online.
"""
from sqlalchemy import select

from volstack.db.models import Host
from volstack.db.storage_models import DiskOffering, ServiceOffering, StoragePool, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, InsufficientCapacity, InvalidParameter
from volstack.services import allocator, encryption, events, limits, offerings, volume_migration, volumes
from volstack.services.lifecycle import VOLUME

GIB = 1024 ** 3


def _gb(n: int) -> str:
    return f"{n / GIB:g} GB"


def _root(s, vm) -> Volume:
    return s.scalar(select(Volume).where(Volume.vm_id == vm.id, Volume.volume_type == "ROOT",
                                         Volume.removed.is_(None)))


def root_size_problem(old: ServiceOffering, new: ServiceOffering, root_size: int) -> str | None:
    if not new.root_disk_size:
        return None
    if old.root_disk_size and new.root_disk_size < old.root_disk_size:
        return (f"service offering {new.name} has a root disk size of {_gb(new.root_disk_size)}, smaller than the "
                f"{_gb(old.root_disk_size)} of {old.name}: changing the service offering never shrinks the root disk")
    if new.root_disk_size < root_size:
        return (f"the root volume is {_gb(root_size)}, larger than the {_gb(new.root_disk_size)} root disk of service "
                f"offering {new.name}: changing the service offering never shrinks the root disk (pick an "
                "offering with a larger root disk size, or one with 0, which does not enforce a size)")
    return None


def change(s, ctx, vm: VirtualMachine, serviceofferingid: str, *, running_ok=False, automigrate=False,
           progress=None) -> VirtualMachine:
    cmd = "scaleVirtualMachine" if running_ok else "changeServiceForVirtualMachine"
    new = offerings.get_service_offering(s, ctx, serviceofferingid, zone_id=vm.zone_id)
    old = s.get(ServiceOffering, vm.service_offering_id)
    if vm.state not in ("Stopped", "Running"):
        raise InvalidParameter(f"VM {vm.name} is {vm.state}; its service offering can change when it is Stopped")
    volumes.check_operation(s, "changeServiceOffering", vm)
    if vm.state == "Running" and not running_ok:
        raise InvalidParameter(f"VM {vm.name} is Running: stop it to change its service offering, or use "
                               "scaleVirtualMachine to change only the storage side while it runs")
    if new.id == old.id:
        raise InvalidParameter(f"VM {vm.name} already uses service offering {new.name}")
    if vm.state == "Running" and (new.cpu, new.speed, new.ram_size, new.customized) != \
            (old.cpu, old.speed, old.ram_size, old.customized):
        raise InvalidParameter(f"{cmd}: VM {vm.name} is Running and service offering {new.name} has other CPU or "
                               "memory; volstack does not hot-plug CPUs or memory: stop the VM and use "
                               "changeServiceForVirtualMachine")
    root = _root(s, vm)
    problem = root_size_problem(old, new, root.size)
    if problem:
        raise InvalidParameter(f"Cannot change the service offering of VM {vm.name}: {problem}")
    new_do = s.get(DiskOffering, new.disk_offering_id)
    target_size = max(root.size, new.root_disk_size or 0)
    if target_size > root.size:
        limits.check_limit(s, root.account_id, "primary_storage", target_size - root.size)
    host = s.get(Host, vm.host_id) if vm.state == "Running" else None
    if root.state == "Ready":
        _place_root(s, ctx, vm, root, new_do, host, automigrate, progress)
        if target_size > root.size:
            _grow_root(s, ctx, vm, root, target_size, host)
    root.size = target_size
    root.disk_offering_id = new_do.id
    root.min_iops, root.max_iops = new_do.min_iops, new_do.max_iops
    vm.service_offering_id = new.id
    if host is not None and root.state == "Ready":        # the new offering's QoS, online
        from volstack.drivers.default import serial_of
        channel(host).call("disk_set_qos", vm=vm.uuid, serial=serial_of(root), qos=offerings.qos_of(new_do, s))
    events.record(s, ctx, "VM.UPGRADE", f"VM {vm.name} changed from service offering {old.name} to {new.name}",
                  resource_type="VirtualMachine", resource_uuid=vm.uuid)
    return vm


def _place_root(s, ctx, vm, root, new_do, host, automigrate, progress) -> None:
    """Move the root volume if its pool does not suit the new offering's disk side (tags, local/shared)."""
    pool = s.get(StoragePool, root.pool_id)
    local = (new_do.storage_type or "shared") == "local"
    if allocator.tags_match(pool, allocator.offering_tags(new_do)) and (pool.scope == "HOST") == local:
        return
    if not automigrate:
        raise InvalidParameter(f"The root volume of VM {vm.name} is on storage pool {pool.name}, which does not suit "
                               "the new service offering (storage tags or local/shared); pass automigrate=true to "
                               "move it to a pool that does")
    target = allocator.choose(s, zone_id=root.zone_id, size=root.size, offering=new_do,
                              hypervisor=root.hypervisor or vm.hypervisor, host=host, account_id=root.account_id,
                              exclude=(pool.id,))
    volume_migration.migrate(s, ctx, root, target, livemigrate=host is not None, progress=progress)


def _grow_root(s, ctx, vm, root, size: int, host) -> None:
    pool = s.get(StoragePool, root.pool_id)
    worker = host or volumes._host_for_pool(s, pool)
    ok, why = allocator.candidates(s, zone_id=root.zone_id, size=size - root.size, offering=allocator.placement_of(pool),
                                   hypervisor=worker.hypervisor, host=worker, account_id=root.account_id,
                                   encrypted=encryption.is_encrypted(root))
    if pool.id not in {p.id for p in ok}:
        raise InsufficientCapacity(f"Storage pool {pool.name} cannot grow the root volume of VM {vm.name} to "
                                   f"{_gb(size)}: {why.get(pool.name, 'not suitable')}")
    volumes.begin_host_work(s, root, "ResizeRequested")
    try:
        if host is not None:
            from volstack.drivers.default import serial_of
            channel(host).call("disk_resize", vm=vm.uuid, serial=serial_of(root), size=size)
        else:
            driver_for(pool.provider).resize_volume(channel(worker), pool, root, size, False)
    except CloudError as exc:
        volumes.host_work_failed(s, root, exc, error=f"growing the root disk to {size} bytes failed: {exc.text}")
    VOLUME.fire(s, root, "OperationSucceeded", error=None, size=size)
