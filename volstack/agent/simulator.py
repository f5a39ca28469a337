"""The `simulator` hypervisor adapter: the qemu adapter's behaviour, in memory, for many hosts on one machine.

Guests are records in `<state>/simulator.json`, so they "keep running" across agent restarts as real
guests do. Arguments are checked exactly as the qemu adapter checks them and volumes must exist on
their pools (storage is real in both adapters). Block statistics grow with the time a disk has been
attached, bounded by its QoS, so metrics have something to show.
"""
import json
import os
import threading
import time

from volstack.agent import hypervisor as hv
from volstack.agent import images
from volstack.agent.errors import Busy, InvalidArgument, NotFound, Unavailable


class SimulatedHypervisor:
    name = "simulator"

    def __init__(self, state_dir: str, hostname: str):
        self.path = os.path.join(state_dir, "simulator.json")
        self.hostname = hostname
        self._lock = threading.RLock()
        try:
            with open(self.path) as f:
                self.vms = json.load(f)
        except FileNotFoundError:
            self.vms = {}

    def capabilities(self) -> dict:
        return {"kvm": False, "tcg": False, "qemu_version": "", "max_data_disks": hv.MAX_DATA_DISKS}

    def _save(self) -> None:
        with open(self.path + ".tmp", "w") as f:
            json.dump(self.vms, f)
        os.replace(self.path + ".tmp", self.path)

    def _need(self, name: str) -> dict:
        vm = self.vms.get(name)
        if vm is None:
            raise NotFound(f"no VM {name} on host {self.hostname}")
        return vm

    def _disk(self, vm: dict, serial: str) -> dict:
        disk = vm["disks"].get(hv.check_serial(serial))
        if disk is None:
            raise NotFound(f"VM {vm['name']} has no disk with serial {serial}")
        return disk

    def _exists(self, d: dict) -> None:
        if not images.open_pool(d["pool"], self.hostname).exists(d["name"]):
            raise NotFound(f"volume {d['name']} does not exist in pool {d['pool_uuid']}")

    def _describe(self, vm: dict) -> dict:
        disks = sorted(vm["disks"].values(), key=lambda d: d["device_id"])
        return {"name": vm["name"], "uuid": vm["uuid"], "state": vm["state"], "disks": [d["serial"] for d in disks],
                "images": hv.disk_report(disks), "cdrom": (vm.get("cdrom") or {}).get("name")}

    def list(self) -> dict:
        with self._lock:
            return {"vms": [self._describe(v) for _, v in sorted(self.vms.items())]}

    def start(self, vm: dict) -> dict:
        spec = hv.check_vm(vm, self.hostname)
        with self._lock:
            old = self.vms.get(spec["name"])
            if old is not None and old["state"] == "Running":
                hv.check_same_guest(old, spec, self.hostname)
                return {**self._describe(old), "adopted": True}
            hv.check_not_open_elsewhere(self, spec["name"], spec["disks"])
            for d in spec["disks"] + ([spec["cdrom"]] if spec["cdrom"] else []):
                self._exists(d)
            now = time.time()
            self.vms[spec["name"]] = {**{k: spec[k] for k in ("name", "uuid", "memory_mb", "cpus", "boot", "cdrom")},
                                      "state": "Running",
                                      "disks": {d["serial"]: {**hv.recorded(d), "since": now} for d in spec["disks"]}}
            self._save()
            return self._describe(self.vms[spec["name"]])

    def stop(self, name: str, forced: bool = False, timeout: float = 10) -> dict:
        with self._lock:
            vm = self.vms.get(name)
            if vm is not None:
                vm["state"] = "Stopped"
                self._save()
            return {"forced": False}

    def reboot(self, name: str) -> dict:
        with self._lock:
            if self._need(name)["state"] != "Running":
                raise Unavailable(f"VM {name} is not running on host {self.hostname}")
            return {}

    def destroy(self, name: str) -> dict:
        with self._lock:
            if self.vms.pop(name, None) is not None:
                self._save()
            return {}

    def in_use(self, pool_uuid: str, name: str) -> str | None:
        with self._lock:
            for vm in self.vms.values():
                media = [*vm["disks"].values(), *([vm["cdrom"]] if vm.get("cdrom") else [])]
                if vm["state"] == "Running" and any(d["pool_uuid"] == pool_uuid and d["name"] == name for d in media):
                    return vm["name"]
            return None

    def attach(self, vm: str, disk: dict) -> dict:
        d = hv.check_disk(disk, self.hostname)
        with self._lock:
            rec = self._need(vm)
            have = rec["disks"].get(d["serial"])
            if have is not None:
                if not hv.same_image(have, d):
                    raise InvalidArgument(f"VM {vm} already has another disk with serial {d['serial']}")
                return {"serial": d["serial"]}
            if len(rec["disks"]) > hv.MAX_DATA_DISKS:
                raise InvalidArgument(f"VM {vm} already has {len(rec['disks'])} disks "
                                      f"(at most {hv.MAX_DATA_DISKS} data disks)")
            self._exists(d)
            hv.check_not_open_elsewhere(self, vm, [d])
            rec["disks"][d["serial"]] = {**hv.recorded(d), "since": time.time()}
            self._save()
            return {"serial": d["serial"]}

    def insert_cd(self, vm: str, medium: dict) -> dict:
        m = hv.check_medium(medium, self.hostname)
        with self._lock:
            rec = self._need(vm)
            if m is not None:
                self._exists(m)
            rec["cdrom"] = m
            self._save()
            return {"cdrom": m and m["name"]}

    def eject_cd(self, vm: str) -> dict:
        return self.insert_cd(vm, None)

    def detach(self, vm: str, serial: str, timeout: float = 30) -> dict:
        with self._lock:
            rec = self._need(vm)
            if rec["disks"].pop(hv.check_serial(serial), None) is not None:
                self._save()
            return {}

    def set_qos(self, vm: str, serial: str, qos: dict) -> dict:
        qos = hv.check_qos(qos)
        with self._lock:
            self._disk(self._need(vm), serial)["qos"] = qos
            self._save()
            return {"qos": qos}

    def stats(self, vm: str) -> dict:
        with self._lock:
            rec = self._need(vm)
            if rec["state"] != "Running":
                return {"disks": {}}
            out, now = {}, time.time()
            for serial, d in rec["disks"].items():
                t = max(0.0, now - d["since"])
                rd_iops = min(100, d["qos"].get("iops_rd", 100))
                wr_iops = min(50, d["qos"].get("iops_wr", 50))
                out[serial] = {"rd_ops": int(t * rd_iops), "wr_ops": int(t * wr_iops),
                               "rd_bytes": int(t * rd_iops) * 4096, "wr_bytes": int(t * wr_iops) * 4096}
            return {"disks": out}

    def resize(self, vm: str, serial: str, size: int, encryption=None) -> dict:
        with self._lock:
            d = self._disk(self._need(vm), serial)
        return images.resize(images.open_pool(d["pool"], self.hostname), d["name"], images.check_size(size),
                             d["format"], encryption=encryption)

    def mirror(self, vm: str, serial: str, dst_spec: dict, dst_name: str, fmt: str, progress=None,
               speed: int = 0, encryption=None) -> dict:
        dst = images.open_pool(dst_spec, self.hostname)
        with self._lock:
            rec = self._need(vm)
            if rec["state"] != "Running":
                raise Unavailable(f"VM {vm} is not running on host {self.hostname}")
            d = self._disk(rec, serial)
            if d.get("migrating"):
                raise Busy(f"disk {serial} of VM {vm} is being migrated")
            d["migrating"] = True
        try:
            src = images.open_pool(d["pool"], self.hostname)
            result = images.copy(src, d["name"], dst, dst_name, fmt, progress, src_format=d["format"],
                                 src_encryption=encryption if d.get("encryption") else None, encryption=encryption)
        finally:
            with self._lock:
                d.pop("migrating", None)
        with self._lock:
            d.update({"pool": dst_spec, "pool_uuid": dst.uuid, "name": dst_name, "format": fmt})
            self._save()
        return {"path": result["path"], "serial": serial}

    def cancel_mirror(self, vm: str, serial: str, timeout: float = 30) -> dict:
        """A simulated mirror is one copy that cannot be stopped midway: wait for it, say where the disk is."""
        deadline = time.monotonic() + timeout
        while True:
            with self._lock:
                d = self._disk(self._need(vm), serial)
                if not d.get("migrating"):
                    return {"pool_uuid": d["pool_uuid"], "name": d["name"], "format": d["format"]}
            if time.monotonic() >= deadline:
                raise Busy(f"the migration of disk {serial} of VM {vm} did not end within {timeout:.0f} s")
            time.sleep(0.05)

    def recover_mirror(self, args: dict) -> dict | None:
        with self._lock:
            d = self.vms.get(args.get("vm"), {}).get("disks", {}).get(args.get("serial"))
            if d and d["name"] == args.get("dst_name") and d["pool_uuid"] == (args.get("dst_pool") or {}).get("uuid"):
                return {"path": d["name"], "serial": args["serial"]}
            return None

    # ---- live migration (the qemu adapter's steps, agent/migration.py; nothing to transfer here)

    def migrate_spec(self, name: str) -> dict:
        with self._lock:
            rec = self._need(name)
            if rec["state"] != "Running":
                raise Unavailable(f"VM {name} is not running on host {self.hostname}")
            disks = [{k: d[k] for k in ("pool", "name", "format", "serial", "device_id", "qos")} | {"slot": i}
                     for i, d in enumerate(sorted(rec["disks"].values(), key=lambda d: d["device_id"]))]
            spec = {k: rec[k] for k in ("name", "uuid", "memory_mb", "cpus")}
            cd = rec.get("cdrom")
            return {"spec": {**spec, "kernel": None, "initrd": None, "append": None, "boot": rec.get("boot"),
                             "cdrom": cd and {"pool": cd["pool"], "name": cd["name"]}, "disks": disks},
                    "running": True}

    def migrate_prepare(self, vm: dict, address: str) -> dict:
        spec = hv.check_vm(vm, self.hostname)
        if not isinstance(address, str) or not address:
            raise InvalidArgument("address must be the host name or IPv4 address to receive the migration on")
        with self._lock:
            old = self.vms.get(spec["name"])
            if old is not None and old["state"] in ("Incoming", "Running"):
                if old["state"] == "Running":
                    raise Busy(f"VM {spec['name']} already runs on host {self.hostname}")
                return {"uri": old["uri"]}
            for d in spec["disks"] + ([spec["cdrom"]] if spec["cdrom"] else []):
                self._exists(d)
            now, uri = time.time(), f"tcp:{address}:0"
            self.vms[spec["name"]] = {**{k: spec[k] for k in ("name", "uuid", "memory_mb", "cpus", "boot", "cdrom")},
                                      "state": "Incoming", "uri": uri,
                                      "disks": {d["serial"]: {**hv.recorded(d), "since": now} for d in spec["disks"]}}
            self._save()
            return {"uri": uri}

    def migrate(self, name: str, uri: str, progress=None, speed: int = 0) -> dict:
        with self._lock:
            rec = self._need(name)
            if rec["state"] != "Running":
                raise Unavailable(f"VM {name} is not running on host {self.hostname}")
            rec["migration"] = {"uri": uri, "resume": True}
            self._save()
        if progress:
            progress(50)
        return {"resume": True}

    def migrate_finish(self, name: str, resume: bool, timeout: float = 60) -> dict:
        with self._lock:
            rec = self._need(name)
            if rec["state"] == "Incoming":
                rec["state"] = "Running"
                rec.pop("uri", None)
                self._save()
            return self._describe(rec)

    def migrate_abort(self, name: str) -> dict:
        with self._lock:
            rec = self.vms.get(name)
            if rec is not None and rec["state"] == "Running":
                raise Busy(f"VM {name} runs on host {self.hostname}: it is not an unfinished incoming migration")
            if self.vms.pop(name, None) is not None:
                self._save()
            return {}

    def migrate_resume(self, name: str) -> dict:
        with self._lock:
            rec = self._need(name)
            rec.pop("migration", None)
            self._save()
            return self._describe(rec)

    def recover_migrate(self, args: dict) -> dict | None:
        with self._lock:
            m = self.vms.get(args.get("name"), {}).get("migration")
            return {"resume": m["resume"]} if m and m["uri"] == args.get("uri") else None

    def backup_disk(self, vm: str, serial: str, dst, dst_name: str, progress=None) -> dict:
        """A running guest's disk copied as it is: simulated guests never write, so the copy is consistent."""
        with self._lock:
            rec = self._need(vm)
            if rec["state"] != "Running":
                raise Unavailable(f"VM {vm} is not running on host {self.hostname}")
            d = dict(self._disk(rec, serial))
        src = images.open_pool(d["pool"], self.hostname)
        images.copy(src, d["name"], dst, dst_name, "qcow2", progress, src_format=d["format"])
        return {"path": dst_name}
