"""Live migration of a running guest between two hosts, for the qemu adapter (a mixin of QemuHypervisor).

The management server drives four steps, each an idempotent agent command:

    source  migrate_spec(name)           the guest as it runs: memory, cpus, boot, disks with their slots,
                                         the ISO in its CD drive
    dest    migrate_prepare(spec, addr)  an incoming QEMU (`-incoming defer`) with the same devices in the
                                         same slots, listening on addr; returns the tcp uri
    source  migrate(name, uri)           QMP `migrate`, progress from the RAM counters, until completed;
                                         on failure QEMU keeps the guest running here
    dest    migrate_finish(name, resume) the incoming QEMU has the guest: `cont` it if it ran on the source
            migrate_abort(name)          (instead of finish) drop the incoming QEMU after a failure

The source's copy is then removed with an ordinary destroy: it sits paused in `postmigrate` and can
still be resumed (`migrate_resume`) until then, so no step loses the guest. Disks stay where they are:
both QEMUs open the same images on shared storage; the destination's are inactive until the end.
"""
import os
import shutil
import time

from volstack.agent import hypervisor as hv
from volstack.agent import images
from volstack.agent.errors import Busy, Failed, InvalidArgument, NotFound
from volstack.agent.qmp import QmpError

_DONE, _FAILED = "completed", ("failed", "cancelled")


class QemuMigration:

    def _new_record(self, spec: dict) -> dict:
        """A guest's record and its directories, fresh sockets: for a start and for a migration target alike."""
        name, socks = spec["name"], self._sock_dir(spec["name"])
        os.makedirs(self._dir(name), exist_ok=True)
        os.makedirs(socks, exist_ok=True)
        rec = {k: spec[k] for k in ("name", "uuid", "memory_mb", "cpus", "kernel", "initrd", "append", "boot")}
        rec.update({"bus": "virtio" if hv.runs(rec) else "scsi", "disks": {}, "cdrom": None, "next_node": 0,
                    "qmp": os.path.join(socks, "qmp.sock"), "monitor": os.path.join(socks, "monitor.sock"),
                    "console": os.path.join(socks, "console.sock")})
        for sock in ("qmp", "monitor", "console"):
            if os.path.exists(rec[sock]):
                os.unlink(rec[sock])
        return rec

    def _forget(self, rec: dict) -> None:
        shutil.rmtree(self._sock_dir(rec["name"]), ignore_errors=True)
        shutil.rmtree(self._dir(rec["name"]), ignore_errors=True)

    def migrate_spec(self, name: str) -> dict:
        with self._lock(name):
            rec = self._running(self._need(name))
            if rec.get("incoming"):
                raise Busy(f"VM {name} is arriving on host {self.hostname} by migration; it cannot leave yet")
            with self._qmp(rec) as q:
                status = q.execute("query-status")["status"]
            disks = [{k: d[k] for k in ("pool", "name", "format", "serial", "device_id", "qos", "slot", "encryption")
                      if k in d}      # an encrypted disk's passphrase is added by the management server
                     for d in sorted(rec["disks"].values(), key=lambda d: d["slot"]) if d.get("node")]
            spec = {k: rec.get(k) for k in ("name", "uuid", "memory_mb", "cpus", "kernel", "initrd", "append", "boot",
                                            "accel")}
            cd = rec.get("cdrom")       # the ISO in the CD drive travels: the destination opens it too
            spec["cdrom"] = {"pool": cd["pool"], "name": cd["name"]} if cd and cd.get("node") else None
            return {"spec": {**spec, "disks": disks}, "running": status == "running"}

    def migrate_prepare(self, vm: dict, address: str) -> dict:
        spec = hv.check_vm(vm, self.hostname)
        slots = [d.get("slot") for d in vm.get("disks") or []]
        if any(isinstance(s, bool) or not isinstance(s, int) or not 0 <= s <= hv.MAX_DATA_DISKS for s in slots) \
                or len(set(slots)) != len(slots):
            raise InvalidArgument(f"each disk needs its own slot from 0 to {hv.MAX_DATA_DISKS} (as on the source)")
        by_serial = {d["serial"]: d["slot"] for d in vm["disks"]}
        accel = vm.get("accel") or "tcg"
        if accel not in ("kvm", "tcg"):
            raise InvalidArgument(f"accel must be kvm or tcg, not {accel!r}")
        if not isinstance(address, str) or not address or any(c in address for c in ",: /"):
            raise InvalidArgument("address must be the host name or IPv4 address to receive the migration on")
        name = spec["name"]
        with self._lock(name):
            old = self._load(name)
            if old is not None and self._pid(old):
                if old.get("incoming"):
                    return {"uri": old["incoming"]["uri"]}
                raise Busy(f"VM {name} already runs on host {self.hostname}")
            for d in spec["disks"]:
                if not images.open_pool(d["pool"], self.hostname).exists(d["name"]):
                    raise NotFound(f"volume {d['name']} does not exist in pool {d['pool_uuid']} as seen from host "
                                   f"{self.hostname}")
            if spec["cdrom"]:
                self._check_medium_exists(spec["cdrom"])
            rec = self._new_record(spec)
            rec["incoming"] = {"accel": accel, "uri": None}
            self._save(rec)
            self._launch(rec)
            try:
                with self._qmp(rec) as q:
                    for d in spec["disks"]:
                        self._plug(q, rec, d, slot=by_serial[d["serial"]])
                    if spec["cdrom"]:
                        self._insert(q, rec, spec["cdrom"])
                    q.execute("migrate-incoming", {"uri": f"tcp:{address}:0"})
                    port = q.execute("query-migrate")["socket-address"][0]["port"]
            except BaseException as e:
                self._kill(rec)
                self._forget(rec)
                if isinstance(e, QmpError):
                    raise Failed(f"QEMU on host {self.hostname} cannot receive VM {name}: {e.desc}") from None
                raise
            rec["incoming"]["uri"] = f"tcp:{address}:{port}"
            self._save(rec)
            return {"uri": rec["incoming"]["uri"]}

    def migrate(self, name: str, uri: str, progress=None, speed: int = 0) -> dict:
        """Send the guest to uri; True in "resume" if it was running (the destination must `cont` it)."""
        if not isinstance(uri, str) or not uri.startswith("tcp:"):
            raise InvalidArgument("uri must be the tcp: address migrate_prepare returned")
        progress = progress or (lambda p: None)
        with self._lock(name):
            rec = self._running(self._need(name))
            if any(vm == name for vm, _ in self._mirroring):
                raise Busy(f"a disk of VM {name} is being migrated to another pool; migrate the VM afterwards")
            with self._qmp(rec) as q:
                state = q.execute("query-migrate").get("status")
                if state == _DONE and rec.get("migration", {}).get("uri") == uri:
                    return {"resume": rec["migration"]["resume"]}
                resume = q.execute("query-status")["status"] == "running"
                # a busy guest may dirty memory faster than it can be sent: auto-converge slows its vCPUs
                q.execute("migrate-set-capabilities", {"capabilities": [{"capability": "auto-converge",
                                                                          "state": True}]})
                q.execute("migrate-set-parameters", {"max-bandwidth": speed if speed > 0 else 1 << 30})
                rec["migration"] = {"uri": uri, "resume": resume}
                self._save(rec)
                try:
                    q.execute("migrate", {"uri": uri})
                except QmpError as e:
                    rec.pop("migration")
                    self._save(rec)
                    raise Failed(f"cannot start migrating VM {name}: {e.desc}") from None
        while True:
            with self._lock(name), self._qmp(rec) as q:
                info = q.execute("query-migrate")
            status = info.get("status")
            if status == _DONE:
                progress(99)
                return {"resume": resume}
            if status in _FAILED:
                with self._lock(name):
                    rec = self._need(name)
                    rec.pop("migration", None)
                    self._save(rec)
                raise Failed(f"migrating VM {name} to {uri} failed ({status}): "
                             f"{info.get('error-desc') or 'QEMU gave no reason'}; the VM keeps running here")
            ram = info.get("ram") or {}
            if ram.get("total"):
                progress(min(98, int((ram["total"] - ram.get("remaining", 0)) * 100 / ram["total"])))
            time.sleep(0.1)

    def migrate_finish(self, name: str, resume: bool, timeout: float = 60) -> dict:
        with self._lock(name):
            rec = self._running(self._need(name))
            if not rec.get("incoming"):
                return self._describe(rec)          # finished already
            deadline = time.monotonic() + timeout
            with self._qmp(rec) as q:
                while (status := q.execute("query-migrate").get("status")) != _DONE:
                    if status in _FAILED or time.monotonic() >= deadline:
                        raise Failed(f"VM {name} has not arrived on host {self.hostname} (incoming migration "
                                     f"{status or 'not started'})")
                    time.sleep(0.05)
                if resume:
                    q.execute("cont")
            rec.pop("incoming")
            self._save(rec)
            return self._describe(rec)

    def migrate_abort(self, name: str) -> dict:
        """Drop an incoming QEMU that did not receive the guest; never a guest that runs here."""
        with self._lock(name):
            rec = self._load(name)
            if rec is None:
                return {}
            if not rec.get("incoming") and self._pid(rec):
                raise Busy(f"VM {name} runs on host {self.hostname}: it is not an unfinished incoming migration")
            self._kill(rec)
            self._forget(rec)
            return {}

    def migrate_resume(self, name: str) -> dict:
        """The source after a migration whose destination failed: run the guest here again."""
        with self._lock(name):
            rec = self._running(self._need(name))
            with self._qmp(rec) as q:
                status = q.execute("query-status")["status"]
                if status == "postmigrate" and rec.get("migration", {}).get("resume"):
                    q.execute("cont")
            rec.pop("migration", None)
            self._save(rec)
            return self._describe(rec)

    def recover_migrate(self, args: dict) -> dict | None:
        """After an agent restart: the result if the outgoing migration completed; otherwise cancel it
        (the guest keeps running here) and return None."""
        name = args.get("name")
        with self._lock(name):
            rec = self._load(name)
            if rec is None or "migration" not in rec or not self._pid(rec):
                return None
            with self._qmp(rec) as q:
                if q.execute("query-migrate").get("status") == _DONE and rec["migration"]["uri"] == args.get("uri"):
                    return {"resume": rec["migration"]["resume"]}
                try:
                    q.execute("migrate_cancel")
                except QmpError:
                    pass
            rec.pop("migration")
            self._save(rec)
            return None
