"""What every hypervisor adapter shares: the argument checks for guests and disks, and QoS.

An adapter (qemu.QemuHypervisor, simulator.SimulatedHypervisor) implements:

    capabilities() -> dict                  kvm, tcg, qemu_version, max_data_disks
    start(vm) / stop(name, forced, timeout) / reboot(name) / destroy(name) / list()
    attach(vm, disk) / detach(vm, serial, timeout) / set_qos(vm, serial, qos) / stats(vm)
    insert_cd(vm, medium) / eject_cd(vm)    the CD-ROM drive every guest has: an ISO in, or out (attachIso)
    resize(vm, serial, size) / mirror(vm, serial, dst_pool, dst_name, fmt, progress)
    in_use(pool_uuid, name) -> str | None   the guest using an image, for refusing a delete
    recover_mirror(args) -> dict | None     after a restart: the result if a mirror finished, else clean up
    cancel_mirror(vm, serial) -> dict       stop a mirror that has not switched yet; where the disk is now
    migrate_spec(name) / migrate_prepare(vm, address) / migrate(name, uri, progress, speed) /
    migrate_finish(name, resume) / migrate_abort(name) / migrate_resume(name)    live migration to
                                            another host (agent/migration.py); recover_migrate(args)
"""
import os
import re

from volstack.agent import images, luks
from volstack.agent.errors import Busy, InvalidArgument

MAX_DATA_DISKS = 24
QOS_FIELDS = ("iops_rd", "iops_wr", "bps_rd", "bps_wr", "iops_rd_max", "iops_wr_max", "bps_rd_max", "bps_wr_max",
              "iops_rd_max_length", "iops_wr_max_length", "bps_rd_max_length", "bps_wr_max_length")
_SERIAL = re.compile(r"^[A-Za-z0-9_-]{1,20}$")


def check_qos(qos) -> dict:
    """QoS fields as non-negative ints (absent, null and 0 all mean no limit)."""
    if qos is None:
        return {}
    if not isinstance(qos, dict):
        raise InvalidArgument("qos must be an object of " + ", ".join(QOS_FIELDS))
    unknown = set(qos) - set(QOS_FIELDS)
    if unknown:
        raise InvalidArgument(f"unknown qos fields {', '.join(sorted(unknown))}: use {', '.join(QOS_FIELDS)}")
    out = {}
    for k, v in qos.items():
        if v is None or v == 0:
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < 0:
            raise InvalidArgument(f"qos {k} must be a non-negative integer, not {v!r}")
        out[k] = v
    for kind in ("iops_rd", "iops_wr", "bps_rd", "bps_wr"):
        if f"{kind}_max" in out and kind not in out:
            raise InvalidArgument(f"qos {kind}_max (burst) needs {kind} (the sustained rate)")
        if f"{kind}_max" in out and out[f"{kind}_max"] < out[kind]:
            raise InvalidArgument(f"qos {kind}_max must not be lower than {kind}")
        if f"{kind}_max_length" in out and f"{kind}_max" not in out:
            raise InvalidArgument(f"qos {kind}_max_length (burst length, seconds) needs {kind}_max")
    return out


def throttle_args(qos: dict) -> dict:
    """block_set_io_throttle arguments for a checked qos dict (zeros clear every limit)."""
    args = {"bps": 0, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}
    args.update(qos)
    return args


def check_serial(serial) -> str:
    if not isinstance(serial, str) or not _SERIAL.match(serial):
        raise InvalidArgument(f"invalid disk serial {serial!r}: 1 to 20 of letters, digits, _ and - "
                              "(virtio shows the guest at most 20 characters)")
    return serial


def check_disk(disk, hostname: str) -> dict:
    if not isinstance(disk, dict):
        raise InvalidArgument("a disk must be an object with pool, name, format, serial, device_id, qos")
    pool = images.open_pool(disk.get("pool"), hostname)
    device_id = disk.get("device_id", 0)
    if isinstance(device_id, bool) or not isinstance(device_id, int) or device_id < 0:
        raise InvalidArgument(f"device_id must be a non-negative integer, not {device_id!r}")
    out = {"pool": disk["pool"], "pool_uuid": pool.uuid, "name": images.check_name(disk.get("name")),
           "format": images.check_format(disk.get("format")), "serial": check_serial(disk.get("serial")),
           "device_id": device_id, "qos": check_qos(disk.get("qos"))}
    if disk.get("encryption") is not None:
        out["encryption"] = luks.check(disk["encryption"])
    return out


def recorded(disk: dict) -> dict:
    """A disk as the agent keeps it (vm.json): the passphrase stays only in QEMU's secret object."""
    enc = disk.get("encryption")
    return {**disk, "encryption": {"format": enc["format"]}} if enc else disk


def check_medium(medium, hostname: str) -> dict | None:
    """What goes in the CD-ROM drive: an ISO image (raw) on a pool, or None for an empty drive."""
    if medium is None:
        return None
    if not isinstance(medium, dict):
        raise InvalidArgument("cdrom must be an object with pool and name (an ISO image on the pool), or null")
    pool = images.open_pool(medium.get("pool"), hostname)
    return {"pool": medium["pool"], "pool_uuid": pool.uuid, "name": images.check_name(medium.get("name"))}


def runs(rec: dict) -> bool:
    """Whether a guest really runs (a kernel, or firmware booting its root disk or CD): TCG, virtio disks,
    graceful stop."""
    return bool(rec.get("kernel") or rec.get("boot"))


def check_vm(vm, hostname: str) -> dict:
    if not isinstance(vm, dict):
        raise InvalidArgument("vm must be an object with name, memory_mb, cpus and disks")
    name = images.check_name(vm.get("name"))
    mem, cpus = vm.get("memory_mb", 128), vm.get("cpus", 1)
    if isinstance(mem, bool) or not isinstance(mem, int) or not 16 <= mem <= 1 << 20:
        raise InvalidArgument(f"memory_mb must be an integer from 16 to {1 << 20}, not {mem!r}")
    if isinstance(cpus, bool) or not isinstance(cpus, int) or not 1 <= cpus <= 64:
        raise InvalidArgument(f"cpus must be an integer from 1 to 64, not {cpus!r}")
    for key in ("kernel", "initrd"):
        p = vm.get(key)
        if p is not None and (not isinstance(p, str) or not os.path.isabs(p) or not os.path.isfile(p)):
            raise InvalidArgument(f"{key} {p!r} is not a file on host {hostname}")
    if vm.get("initrd") and not vm.get("kernel"):
        raise InvalidArgument("initrd needs a kernel")
    append = vm.get("append")
    if append is not None and (not isinstance(append, str) or "\0" in append or "\n" in append):
        raise InvalidArgument("append must be a single-line string")
    boot = vm.get("boot")
    if boot not in (None, "disk", "cdrom"):
        raise InvalidArgument(f"boot must be \"disk\" (the root disk first, then the CD) or \"cdrom\" (the CD "
                              f"first) or absent, not {boot!r}")
    if boot and vm.get("kernel"):
        raise InvalidArgument("a VM boots either its kernel or its root disk, not both")
    disks = [check_disk(d, hostname) for d in vm.get("disks") or []]
    serials = [d["serial"] for d in disks]
    if len(set(serials)) != len(serials):
        raise InvalidArgument("two disks of the VM have the same serial")
    if len(disks) > MAX_DATA_DISKS + 1:
        raise InvalidArgument(f"a VM has at most {MAX_DATA_DISKS} data disks besides its root disk")
    return {"name": name, "uuid": vm.get("uuid") or "", "memory_mb": mem, "cpus": cpus, "kernel": vm.get("kernel"),
            "initrd": vm.get("initrd"), "append": append, "boot": boot, "cdrom": check_medium(vm.get("cdrom"), hostname),
            "disks": sorted(disks, key=lambda d: d["device_id"])}


def same_image(disk: dict, other: dict) -> bool:
    return disk["pool_uuid"] == other["pool_uuid"] and disk["name"] == other["name"]


def disk_report(disks) -> list[dict]:
    """What a guest has open, as vm_list reports it: every disk's serial and image (pool, name)."""
    return [{"serial": d["serial"], "pool_uuid": d["pool_uuid"], "name": d["name"], "device_id": d["device_id"]}
            for d in sorted(disks, key=lambda d: d["device_id"])]


def check_same_guest(running: dict, spec: dict, hostname: str) -> None:
    """A start for a guest that already runs is answered with that guest only if it is the guest asked for:
    the same disks (serial and image), memory and CPUs. Anything else is refused, never silently handed back:
    the caller must stop the running guest (or reconcile its record) first."""
    have = {s: (d["pool_uuid"], d["name"]) for s, d in running["disks"].items()}
    want = {d["serial"]: (d["pool_uuid"], d["name"]) for d in spec["disks"]}
    diffs = []
    if have != want:
        diffs.append(f"it has disks {_disk_text(have)}, the start asks for {_disk_text(want)}")
    for key in ("memory_mb", "cpus"):
        if running.get(key) != spec[key]:
            diffs.append(f"{key} {running.get(key)} running, {spec[key]} asked")
    if diffs:
        raise Busy(f"VM {spec['name']} is already running on host {hostname} as another guest: " + "; ".join(diffs)
                   + ". Stop it first (stopVirtualMachine forced=true) or let reconciliation settle it")


def _disk_text(disks: dict) -> str:
    return "[" + ", ".join(f"{s}={p}/{n}" for s, (p, n) in sorted(disks.items())) + "]"


def check_not_open_elsewhere(hv, name: str, disks) -> None:
    """Refuse to open an image that another running guest of this host has open (two writers on one disk)."""
    for d in disks:
        other = hv.in_use(d["pool_uuid"], d["name"])
        if other is not None and other != name:
            raise Busy(f"volume {d['name']} in pool {d['pool_uuid']} is open in running VM {other} on host "
                       f"{hv.hostname}; it cannot be given to VM {name} as well")
