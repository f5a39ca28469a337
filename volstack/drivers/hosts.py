"""The command channel to a host: the agent's HTTP protocol for KVM hosts, an in-memory host for
Simulator hosts (CloudStack's simulator: every command succeeds at once)."""
import threading

from volstack import crypto
from volstack.errors import InvalidParameter, ResourceUnavailable

GIB = 1024 ** 3


class SimulatedHost:
    """Answers the agent's commands from memory, per host, for the lifetime of the process."""
    _hosts: dict = {}
    _lock = threading.Lock()

    def __init__(self, host_uuid: str):
        with self._lock:
            self.state = self._hosts.setdefault(host_uuid, {"pools": {}, "vms": {}})

    def hello(self) -> dict:
        return {"protocol": 1, "hypervisor": "simulator", "capabilities": {"max_data_disks": 6}}

    def call(self, cmd: str, **args):
        fn = getattr(self, "_" + cmd, None)
        if fn is None:
            return {}
        with self._lock:
            # failure injection for tests, as CloudStack's configureSimulator: {command: error text}
            fail = self.state.get("fail", {}).get(cmd)
            if fail:
                raise ResourceUnavailable(fail)
            return fn(**args)

    def _images(self, pool):
        return self.state["pools"].setdefault(pool["uuid"], {})

    def _pool_connect(self, pool):
        return self._pool_stats(pool)

    def _pool_stats(self, pool):
        used = sum(self._images(pool).values())
        cap = pool.get("capacity") or 1024 * GIB
        return {"capacity": cap, "used": used, "available": cap - used}

    def _volume_create(self, pool, name, size, **_):
        self._images(pool)[name] = size
        return {"path": name, "size": size, "physical_size": 0}

    def _volume_delete(self, pool, name):
        self._images(pool).pop(name, None)
        return {}

    def _volume_resize(self, pool, name, size, shrink_ok=False, **_):
        images = self._images(pool)
        if name not in images:
            raise InvalidParameter(f"volume {name} does not exist on the simulated pool")
        if size < images[name] and not shrink_ok:
            raise InvalidParameter("shrinking needs shrink_ok")
        images[name] = size
        return {"size": size}

    def _volume_copy(self, src_pool, src_name, dst_pool, dst_name, **_):
        size = self._images(dst_pool)[dst_name] = self._images(src_pool).get(src_name, 0)
        return {"path": dst_name, "size": size, "physical_size": 0}     # as the agent answers (templates read size)

    def _volume_info(self, pool, name, **_):
        images = self._images(pool)
        if name not in images:
            raise InvalidParameter(f"{name} does not exist on the simulated pool")
        return {"size": images[name], "physical_size": 0, "format": "qcow2", "backing": None}

    def _volume_import_check(self, pool, name, **_):
        return {k: v for k, v in self._volume_info(pool, name).items() if k != "backing"}

    def _template_download(self, pool, name, format, **_):
        size = self._images(pool).setdefault(name, GIB)       # a simulated template: 1 GiB, ready at once
        fmt = "qcow2" if str(format).upper() == "QCOW2" else "raw"
        return {"path": name, "format": fmt, "image_format": str(format).upper(), "size": size, "physical_size": 0,
                "downloaded": 0, "checksum": None, "verified": False, "validators": None, "reused": False}

    def _certificate_install(self, alias, certificate, **_):
        self.state.setdefault("certs", {})[alias] = certificate
        return {"installed": True}

    def _certificate_remove(self, alias, **_):
        return {"removed": self.state.setdefault("certs", {}).pop(alias, None) is not None}

    def _template_verify(self, checksum=None, **_):
        return {"checksum": checksum, "verified": True, "mirrors": {}, "downloaded": 0}

    def _cdrom_insert(self, vm, medium):
        self.state["vms"].setdefault(vm, {"state": "Running", "disks": []})["cdrom"] = medium["name"]
        return {"cdrom": medium["name"]}

    def _cdrom_eject(self, vm):
        self.state["vms"].get(vm, {}).pop("cdrom", None)
        return {"cdrom": None}

    def _template_check_source(self, validators=None, **_):
        return {"changed": False, "reason": "unchanged", "validators": validators or {}}

    def _snapshot_take(self, pool, name, snapshot, **_):
        images = self._images(pool)
        if name not in images:
            raise InvalidParameter(f"volume {name} does not exist on the simulated pool")
        images[f"{snapshot}.qcow2"] = images[name]
        return {"kind": "file", "name": f"{snapshot}.qcow2", "size": images[name]}

    def _snapshot_backup(self, pool, primary, dst_pool, dst_name, **_):
        size = self._images(dst_pool)[dst_name] = self._images(pool).get(primary, 0)
        return {"path": dst_name, "size": size, "physical_size": 0, "format": "qcow2"}

    def _snapshot_delete_primary(self, pool, primary, **_):
        return {"removed": self._images(pool).pop(primary, None) is not None}

    def _snapshot_revert(self, pool, name, src_pool=None, src_name=None, **_):
        size = self._images(pool)[name] = self._images(src_pool).get(src_name, 0) if src_pool else \
            self._images(pool).get(name, 0)
        return {"path": name, "size": size, "physical_size": 0, "format": "qcow2"}

    def _vm_snapshot_create(self, disks, **_):           # VM snapshots: nothing to keep, failures injectable
        return {"disks": [d["serial"] for d in disks]}

    _vm_snapshot_revert = _vm_snapshot_delete = _vm_snapshot_create

    def _pool_list(self, pool, path=""):
        return {"entries": [{"name": n, "isdirectory": False, "size": sz, "format": "qcow2"}
                            for n, sz in sorted(self._images(pool).items())]}

    def _vm_start(self, name, disks=(), cdrom=None, **_):
        self.state["vms"][name] = {"state": "Running", "disks": [d["serial"] for d in disks],
                                   **({"cdrom": cdrom["name"]} if cdrom else {})}
        return {"state": "Running"}

    def _vm_stop(self, name, forced=False):
        self.state["vms"].pop(name, None)
        return {"state": "Stopped"}

    def _vm_list(self):
        return {"vms": [{"name": n, **v} for n, v in self.state["vms"].items()]}

    def _disk_attach(self, vm, disk):
        self.state["vms"].setdefault(vm, {"state": "Running", "disks": []})["disks"].append(disk["serial"])
        return {}

    def _disk_detach(self, vm, serial):
        disks = self.state["vms"].get(vm, {}).get("disks", [])
        if serial in disks:
            disks.remove(serial)
        return {}

    def _vm_migrate_spec(self, name):
        vm = self.state["vms"].get(name)
        if vm is None:
            raise ResourceUnavailable(f"VM {name} is not running on this simulated host")
        return {"spec": {"name": name, "disks": list(vm["disks"]), "cdrom": vm.get("cdrom")}, "running": True}

    def _vm_migrate_prepare(self, vm, address):
        have = self.state["vms"].get(vm["name"])
        if have is not None and have["state"] == "Running":
            raise ResourceUnavailable(f"VM {vm['name']} already runs on this simulated host")
        self.state["vms"][vm["name"]] = {"state": "Incoming", "disks": list(vm["disks"]),
                                         **({"cdrom": vm["cdrom"]} if vm.get("cdrom") else {})}
        return {"uri": f"tcp:{address}:0"}

    def _vm_migrate(self, name, uri, **_):
        return {"resume": True}

    def _vm_migrate_finish(self, name, resume, **_):
        self.state["vms"][name]["state"] = "Running"
        return {"name": name, "state": "Running"}

    def _vm_migrate_abort(self, name):
        if self.state["vms"].get(name, {}).get("state") == "Incoming":
            del self.state["vms"][name]
        return {}

    def _vm_destroy(self, name):
        self.state["vms"].pop(name, None)
        return {}

    def _disk_set_qos(self, vm, serial, qos):
        self.state.setdefault("qos", {})[(vm, serial)] = qos       # what tests look at
        return {"qos": qos}

    def _disk_stats(self, vm):
        return {"disks": {s: {"rd_ops": 0, "wr_ops": 0, "rd_bytes": 0, "wr_bytes": 0}
                          for s in self.state["vms"].get(vm, {}).get("disks", [])}}


def channel(host):
    """The channel to talk to one host row."""
    if host.hypervisor == "Simulator":
        return SimulatedHost(host.uuid)
    from volstack.agent.client import AgentClient
    if not host.credential:
        raise ResourceUnavailable(f"Host {host.name} has no agent credential; add it again with its token")
    return AgentClient(host.url, crypto.decrypt(host.credential), timeout=30)


def run_long(ch, cmd: str, progress=None, task: str | None = None, **args) -> dict:
    """Run a long command as an agent task, reporting its progress; plain call on a simulated host.
    task: the task's id, chosen by the caller (who can then cancel it with task_cancel)."""
    if not hasattr(ch, "call_async"):
        return ch.call(cmd, **args)
    task = ch.call_async(cmd, _task=task, **args)
    return ch.wait_task(task, progress_cb=progress)
