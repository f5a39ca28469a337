"""The `qemu` hypervisor adapter: guests are daemonized QEMU processes driven through QMP.

Each guest has a directory `<state>/vms/<name>/` with `vm.json` (what the agent knows: spec, disks,
slots, node names), `qemu.pid` and `console.log`, and three unix sockets: `qmp.sock` (the agent's
monitor), `monitor.sock` (a second QMP monitor for operators and tests) and `console.sock` (the
serial console). QEMU daemonizes, so guests outlive the agent; a restarted agent finds them again
from the pid file (checked against the process's command line) and its monitor.

Guests with a kernel, or with a root disk to boot (templates), run under TCG (KVM here is
paravirtual and cannot boot a stock kernel) and get virtio-blk disks, one pcie-root-port each. Guests without a kernel are started paused (`-S`) under
KVM when it works; nothing in them can acknowledge a virtio unplug, so their disks are scsi-hd on a
virtio-scsi controller, which unplugs at once. Disks are found by serial either way. Every guest has
one CD-ROM drive for ISOs (agent/cdrom.py).
"""
import hashlib
import json
import os
import re
import shutil
import signal
import subprocess
import threading
import time

from volstack.agent import hypervisor as hv
from volstack.agent import images, luks, programs
from volstack.agent.cdrom import QemuCdrom, cd_device
from volstack.agent.errors import Busy, Failed, InvalidArgument, NotFound, Unavailable
from volstack.agent.migration import QemuMigration
from volstack.agent.mirror import QemuMirror
from volstack.agent.qmp import Qmp, QmpError, QmpGone

QEMU = programs.QEMU_SYSTEM
SLOTS = hv.MAX_DATA_DISKS + 1
_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


def _qmp_failure(e: QmpError, what: str) -> Exception:
    if e.cls == "GenericError" and ("Invalid" in e.desc or "must" in e.desc or "cannot" in e.desc.lower()):
        return InvalidArgument(f"{what}: {e.desc}")
    return Failed(f"{what}: {e.desc}")


def _add_objects(q: Qmp, pool) -> None:
    """Objects the pool's block driver needs first (an RBD pool's key as a secret); one per pool and guest."""
    for obj in pool.qmp_objects():
        try:
            q.execute("object-add", obj)
        except QmpError as e:
            if "duplicate" not in e.desc.lower():
                raise Failed(f"QEMU refused the access object of pool {pool.uuid}: {e.desc}") from None


class QemuHypervisor(QemuMigration, QemuMirror, QemuCdrom):
    name = "qemu"
    _add_objects = staticmethod(_add_objects)      # for the mixins

    def __init__(self, state_dir: str, hostname: str):
        self.root = os.path.join(state_dir, "vms")
        self.hostname = hostname
        os.makedirs(self.root, exist_ok=True)
        self._locks: dict[str, threading.Lock] = {}
        self._locks_guard = threading.Lock()
        self._mirroring: set[tuple[str, str]] = set()
        self._cancelled: set[tuple[str, str]] = set()     # mirrors asked to stop (cancel_mirror)
        self._caps = None

    # ---- host facts

    def capabilities(self) -> dict:
        if self._caps is None:
            try:
                out = subprocess.run([QEMU, "--version"], capture_output=True, text=True, timeout=10).stdout
                version = re.search(r"version (\S+)", out).group(1)
            except (OSError, AttributeError, subprocess.TimeoutExpired):
                version = ""
            self._caps = {"kvm": os.access("/dev/kvm", os.R_OK | os.W_OK), "tcg": bool(version),
                          "qemu_version": version, "max_data_disks": hv.MAX_DATA_DISKS}
        return dict(self._caps)

    # ---- records

    def _lock(self, name: str) -> threading.Lock:
        with self._locks_guard:
            return self._locks.setdefault(name, threading.Lock())

    def _dir(self, name: str) -> str:
        return os.path.join(self.root, name)

    def _sock_dir(self, name: str) -> str:
        d = self._dir(name)
        if len(d) + len("/monitor.sock") < 100:
            return d
        # unix socket paths are limited to 107 bytes: deep state directories get a short twin in /tmp
        return f"/tmp/volstack-vm-{hashlib.sha1(os.path.abspath(d).encode()).hexdigest()[:16]}"

    def _load(self, name: str) -> dict | None:
        try:
            with open(os.path.join(self._dir(images.check_name(name)), "vm.json")) as f:
                return json.load(f)
        except FileNotFoundError:
            return None

    def _need(self, name: str) -> dict:
        rec = self._load(name)
        if rec is None:
            raise NotFound(f"no VM {name} on host {self.hostname}")
        return rec

    def _save(self, rec: dict) -> None:
        path = os.path.join(self._dir(rec["name"]), "vm.json")
        with open(path + ".tmp", "w") as f:
            json.dump(rec, f, indent=1)
        os.replace(path + ".tmp", path)

    def _pid(self, rec: dict) -> int | None:
        """The guest's QEMU pid if it is running (the pid file alone could name a recycled pid)."""
        try:
            with open(os.path.join(self._dir(rec["name"]), "qemu.pid")) as f:
                pid = int(f.read().strip())
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmdline = f.read()
            with open(f"/proc/{pid}/stat") as f:
                zombie = f.read().rsplit(")", 1)[1].split()[0] == "Z"
        except (OSError, ValueError):
            return None
        return None if zombie or rec["qmp"].encode() not in cmdline else pid

    def _qmp(self, rec: dict) -> Qmp:
        try:
            return Qmp(rec["qmp"], connect_timeout=5)
        except QmpGone as e:
            raise Failed(f"VM {rec['name']} on host {self.hostname} is not running ({e})") from None

    def _running(self, rec: dict) -> dict:
        if self._pid(rec) is None:
            raise Unavailable(f"VM {rec['name']} is not running on host {self.hostname}")
        return rec

    def _describe(self, rec: dict) -> dict:
        disks = sorted(rec["disks"].values(), key=lambda d: d["device_id"])
        state = ("Incoming" if rec.get("incoming") else "Running") if self._pid(rec) else "Stopped"
        return {"name": rec["name"], "uuid": rec["uuid"], "state": state,
                "disks": [d["serial"] for d in disks], "images": hv.disk_report(disks), "console": rec["console"],
                "monitor": rec["monitor"], "accel": rec.get("accel"), "cdrom": (rec.get("cdrom") or {}).get("name")}

    # ---- guests

    def list(self) -> dict:
        out = []
        for name in sorted(os.listdir(self.root)):
            rec = self._load(name)
            if rec is not None:
                out.append(self._describe(rec))
        return {"vms": out}

    def start(self, vm: dict) -> dict:
        spec = hv.check_vm(vm, self.hostname)
        name = spec["name"]
        with self._lock(name):
            old = self._load(name)
            if old is not None and self._pid(old):
                hv.check_same_guest(old, spec, self.hostname)
                return {**self._describe(old), "adopted": True}
            hv.check_not_open_elsewhere(self, name, spec["disks"])
            for d in spec["disks"]:
                if not images.open_pool(d["pool"], self.hostname).exists(d["name"]):
                    raise NotFound(f"volume {d['name']} does not exist in pool {d['pool_uuid']}")
            if spec["cdrom"]:
                self._check_medium_exists(spec["cdrom"])
            rec = self._new_record(spec)
            self._save(rec)
            self._launch(rec)
            try:
                with self._qmp(rec) as q:
                    for d in spec["disks"]:
                        self._plug(q, rec, d)
                    if spec["cdrom"]:
                        self._insert(q, rec, spec["cdrom"])
                    if hv.runs(rec):
                        q.execute("cont")
            except BaseException:
                self._kill(rec)
                raise
            finally:
                self._save(rec)
            return self._describe(rec)

    def _launch(self, rec: dict) -> None:
        vmdir = self._dir(rec["name"])
        # the guest's console may hold what its user typed: 0600. QEMU opens it after -daemonize, which sets
        # umask 027, so it is created here first (logappend keeps the file and its mode)
        os.close(os.open(f"{vmdir}/console.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600))
        kvm = not hv.runs(rec) and self.capabilities()["kvm"]
        base = [QEMU, "-name", f"guest={rec['name']}", "-machine", "q35", "-m", str(rec["memory_mb"]),
                "-smp", str(rec["cpus"]), "-nodefaults", "-no-user-config", "-display", "none", "-S",
                "-qmp", f"unix:{rec['qmp']},server=on,wait=off", "-qmp", f"unix:{rec['monitor']},server=on,wait=off",
                "-chardev", f"socket,id=ser0,path={rec['console']},server=on,wait=off,"
                            f"logfile={vmdir}/console.log,logappend=on",
                "-serial", "chardev:ser0", "-pidfile", f"{vmdir}/qemu.pid", "-daemonize"]
        if _UUID.match(rec["uuid"]):
            base += ["-uuid", rec["uuid"]]
        for i in range(SLOTS):
            slot, fn = 2 + i // 8, i % 8
            base += ["-device", f"pcie-root-port,id=rp{i},chassis={i + 1},bus=pcie.0,addr={slot:#x}.{fn}"
                                + (",multifunction=on" if fn == 0 else "")]
        base += ["-device", f"virtio-scsi-pci,id=scsi0,bus=pcie.0,addr={2 + (SLOTS + 7) // 8:#x}.0"]
        base += cd_device(rec.get("boot"))
        if rec["kernel"]:
            base += ["-kernel", rec["kernel"]] + (["-initrd", rec["initrd"]] if rec["initrd"] else [])
            base += ["-append", rec["append"]] if rec["append"] else []
        attempts = ([["-accel", "kvm", "-cpu", "host,-arch-capabilities"]] if kvm else []) + \
            [["-accel", "tcg,tb-size=32", "-cpu", "max"]]
        if rec.get("incoming"):     # a migration target: the source's accelerator (and so CPU model), no other
            base += ["-incoming", "defer"]
            attempts = [a for a in attempts if a[1].startswith(rec["incoming"]["accel"])] or attempts[-1:]
        for accel in attempts:
            try:
                r = subprocess.run(base + accel, capture_output=True, text=True, timeout=60,
                                   stdin=subprocess.DEVNULL)
            except subprocess.TimeoutExpired:
                raise Failed(f"QEMU did not start VM {rec['name']} within 60 s") from None
            if r.returncode == 0:
                rec["accel"] = accel[1].split(",")[0]
                return
        text = " ".join(r.stderr.strip().splitlines()[-3:])
        raise Failed(f"QEMU could not start VM {rec['name']}: {text}")

    def _kill(self, rec: dict, graceful_timeout: float = 0) -> bool:
        """Stop the QEMU process; True if the guest went by itself within graceful_timeout."""
        pid = self._pid(rec)
        if pid is None:
            return True
        if graceful_timeout > 0:
            try:
                with Qmp(rec["qmp"], connect_timeout=2) as q:
                    q.execute("system_powerdown")
            except (QmpGone, QmpError):
                pass
            if self._wait_gone(rec, graceful_timeout):
                return True
        try:
            with Qmp(rec["qmp"], connect_timeout=2, timeout=5) as q:
                q.execute("quit")
        except (QmpGone, QmpError):
            pass
        if not self._wait_gone(rec, 5):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self._wait_gone(rec, 5)
        return False

    def _wait_gone(self, rec: dict, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._pid(rec) is not None:
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)
        return True

    def stop(self, name: str, forced: bool = False, timeout: float = 10) -> dict:
        with self._lock(name):
            rec = self._load(name)
            if rec is None or self._pid(rec) is None:
                return {"forced": False}
            clean = self._kill(rec, 0 if forced or not hv.runs(rec) else timeout)
            return {"forced": not clean and hv.runs(rec)}

    def reboot(self, name: str) -> dict:
        with self._lock(name):
            rec = self._running(self._need(name))
            with self._qmp(rec) as q:
                q.execute("system_reset")
            return {}

    def destroy(self, name: str) -> dict:
        with self._lock(name):
            rec = self._load(name)
            if rec is None:
                return {}
            self._kill(rec)
            shutil.rmtree(self._sock_dir(name), ignore_errors=True)
            shutil.rmtree(self._dir(name), ignore_errors=True)
            return {}

    def in_use(self, pool_uuid: str, name: str) -> str | None:
        for vm in os.listdir(self.root):
            rec = self._load(vm)
            if rec is None:
                continue
            media = [*rec["disks"].values(), *([rec["cdrom"]] if rec.get("cdrom") else [])]
            if any(d["pool_uuid"] == pool_uuid and d["name"] == name for d in media) and self._pid(rec):
                return vm
        return None

    # ---- disks

    def _device(self, rec: dict, disk: dict) -> str:
        return f"disk{disk['slot']}"

    def _qdev(self, rec: dict, disk: dict) -> str:
        dev = self._device(rec, disk)
        return f"/machine/peripheral/{dev}/virtio-backend" if rec["bus"] == "virtio" else dev

    def _new_node(self, rec: dict) -> str:
        rec["next_node"] += 1
        return f"vol{rec['next_node']}"

    def _plug(self, q: Qmp, rec: dict, d: dict, slot: int | None = None) -> None:
        used = {x["slot"] for x in rec["disks"].values()}
        free = [i for i in range(SLOTS) if i not in used]
        if not free:
            raise InvalidArgument(f"VM {rec['name']} has no free disk slot (at most {hv.MAX_DATA_DISKS} data disks)")
        node, slot = self._new_node(rec), free[0] if slot is None else slot   # a migration target copies slots
        pool = images.open_pool(d["pool"], self.hostname)
        try:
            _add_objects(q, pool)
            # the recorded format, and the backing chain volstack set spelled out: nothing read from the image
            # decides what else QEMU opens
            q.execute("blockdev-add", {**self._format_node(q, d, pool), "node-name": node})
        except QmpError as e:
            self._del_secret(q, d)
            raise (luks.explain(e.desc, d["name"]) if d.get("encryption") else None) or \
                Failed(f"QEMU cannot open volume {d['name']} of pool {d['pool_uuid']}: {e.desc}") from None
        dev = {"id": f"disk{slot}", "drive": node, "serial": d["serial"]}
        if rec["bus"] == "virtio":
            dev.update({"driver": "virtio-blk-pci", "bus": f"rp{slot}"})
            if rec.get("boot") and d["device_id"] == 0:
                dev["bootindex"] = 1 if rec["boot"] == "cdrom" else 0
        else:
            dev.update({"driver": "scsi-hd", "bus": "scsi0.0", "scsi-id": slot, "lun": 0})
        try:
            q.execute("device_add", dev)
        except QmpError as e:
            self._del_node(q, node)
            raise Failed(f"QEMU cannot attach volume {d['name']} to VM {rec['name']}: {e.desc}") from None
        rec["disks"][d["serial"]] = {**hv.recorded(d), "slot": slot, "node": node}
        if d["qos"]:
            self._throttle(q, rec, rec["disks"][d["serial"]], d["qos"])

    def _format_node(self, q: Qmp, d: dict, pool, fresh: bool = False) -> dict:
        """blockdev-add options of a disk (its image d["name"] on pool, in the recorded format): the backing chain
        volstack set spelled out (fresh: a new image, no chain), or for an encrypted disk its LUKS node with no
        backing (encrypted volumes are never clones); the passphrase goes in first as a secret object (one per
        image, so a mirror's copy of the same volume reuses it)."""
        enc, fmt = d.get("encryption"), d["format"]
        if not enc:
            if fresh:
                return {"driver": fmt, "file": pool.blockdev(d["name"]), **({"backing": None} if fmt == "qcow2" else {})}
            return images.blockdev_node(pool, d["name"], fmt)
        sid = luks.secret_id(d["name"])
        if enc.get("secret"):
            try:
                q.execute("object-add", luks.qmp_secret(enc, sid))
            except QmpError as e:
                if "duplicate" not in e.desc.lower() and "already" not in e.desc.lower():
                    raise Failed(f"QEMU refused the passphrase object of volume {d['name']}: {e.desc}") from None
        return {**luks.node(fmt, pool.blockdev(d["name"]), sid), **({"backing": None} if fmt == "qcow2" else {})}

    def _del_secret(self, q: Qmp, d: dict) -> None:
        if d.get("encryption"):
            try:
                q.execute("object-del", {"id": luks.secret_id(d["name"])})
            except QmpError:
                pass        # not added, or still used by another node of the image

    def _del_node(self, q: Qmp, node: str, timeout: float = 5) -> None:
        deadline = time.monotonic() + timeout
        while True:
            try:
                q.execute("blockdev-del", {"node-name": node})
                return
            except QmpError as e:
                if "in use" not in e.desc or time.monotonic() >= deadline:
                    return   # already gone, or still held: QEMU frees it with the device
                time.sleep(0.02)

    def _throttle(self, q: Qmp, rec: dict, disk: dict, qos: dict) -> None:
        try:
            q.execute("block_set_io_throttle", {"id": self._qdev(rec, disk), **hv.throttle_args(qos)})
        except QmpError as e:
            raise _qmp_failure(e, f"QoS for disk {disk['serial']}") from None

    def _disk(self, rec: dict, serial: str) -> dict:
        disk = rec["disks"].get(hv.check_serial(serial))
        if disk is None:
            raise NotFound(f"VM {rec['name']} has no disk with serial {serial}")
        return disk

    def attach(self, vm: str, disk: dict) -> dict:
        d = hv.check_disk(disk, self.hostname)
        with self._lock(vm):
            rec = self._need(vm)
            have = rec["disks"].get(d["serial"])
            if have is not None:
                if not hv.same_image(have, d):
                    raise InvalidArgument(f"VM {vm} already has another disk with serial {d['serial']}")
                return {"serial": d["serial"], "device": self._device(rec, have)}
            if len(rec["disks"]) >= SLOTS:
                raise InvalidArgument(f"VM {vm} already has {len(rec['disks'])} disks "
                                      f"(at most {hv.MAX_DATA_DISKS} data disks)")
            if not images.open_pool(d["pool"], self.hostname).exists(d["name"]):
                raise NotFound(f"volume {d['name']} does not exist in pool {d['pool_uuid']}")
            hv.check_not_open_elsewhere(self, vm, [d])
            if self._pid(rec):
                with self._qmp(rec) as q:
                    self._plug(q, rec, d)
            else:
                used = {x["slot"] for x in rec["disks"].values()}
                rec["disks"][d["serial"]] = {**hv.recorded(d), "slot": min(set(range(SLOTS)) - used), "node": None}
            self._save(rec)
            return {"serial": d["serial"], "device": self._device(rec, rec["disks"][d["serial"]])}

    def detach(self, vm: str, serial: str, timeout: float = 30) -> dict:
        with self._lock(vm):
            rec = self._need(vm)
            disk = rec["disks"].get(hv.check_serial(serial))
            if disk is None:
                return {}
            self._not_mirroring(vm, serial)
            if self._pid(rec):
                dev = self._device(rec, disk)
                with self._qmp(rec) as q:
                    try:
                        q.execute("device_del", {"id": dev})
                    except QmpError as e:
                        if e.cls != "DeviceNotFound":
                            raise Failed(f"cannot detach disk {serial} from VM {vm}: {e.desc}") from None
                    deadline = time.monotonic() + timeout
                    while any(p["name"] == dev for p in q.execute("qom-list", {"path": "/machine/peripheral"})):
                        if time.monotonic() >= deadline:
                            raise Busy(f"VM {vm} has not released disk {serial} within {timeout:.0f} s: the guest "
                                       "OS must acknowledge a virtio unplug (is it running and does it support "
                                       "hot-unplug?). The request stays pending in QEMU; retry the detach later")
                        time.sleep(0.05)
                    self._del_node(q, disk["node"])
                    self._del_secret(q, disk)
            del rec["disks"][serial]
            self._save(rec)
            return {}

    def set_qos(self, vm: str, serial: str, qos: dict) -> dict:
        qos = hv.check_qos(qos)
        with self._lock(vm):
            rec = self._need(vm)
            disk = self._disk(rec, serial)
            if self._pid(rec):
                with self._qmp(rec) as q:
                    self._throttle(q, rec, disk, qos)
            disk["qos"] = qos
            self._save(rec)
            return {"qos": qos}

    def stats(self, vm: str) -> dict:
        with self._lock(vm):
            rec = self._need(vm)
            if not self._pid(rec):
                return {"disks": {}}
            with self._qmp(rec) as q:
                raw = {s.get("qdev"): s["stats"] for s in q.execute("query-blockstats")}
            out = {}
            for serial, disk in rec["disks"].items():
                st = raw.get(self._qdev(rec, disk))
                if st is not None:
                    out[serial] = {"rd_ops": st["rd_operations"], "wr_ops": st["wr_operations"],
                                   "rd_bytes": st["rd_bytes"], "wr_bytes": st["wr_bytes"]}
            return {"disks": out}

    def _inserted(self, q: Qmp, rec: dict, disk: dict) -> dict:
        qdev = self._qdev(rec, disk)
        for b in q.execute("query-block"):
            if b.get("qdev") == qdev and b.get("inserted"):
                return b["inserted"]
        raise Failed(f"QEMU shows no medium for disk {disk['serial']} of VM {rec['name']}")

    def resize(self, vm: str, serial: str, size: int, encryption=None) -> dict:
        images.check_size(size)
        with self._lock(vm):
            rec = self._need(vm)
            disk = self._disk(rec, serial)
            self._not_mirroring(vm, serial)
            if not self._pid(rec):
                return images.resize(images.open_pool(disk["pool"], self.hostname), disk["name"], size,
                                     disk["format"], encryption=encryption)
            with self._qmp(rec) as q:
                current = self._inserted(q, rec, disk)["image"]["virtual-size"]
                if size < current:
                    raise InvalidArgument(f"disk {serial} is {current} bytes; a running guest's disk cannot shrink")
                if size > current:
                    try:
                        q.execute("block_resize", {"node-name": disk["node"], "size": size})
                    except QmpError as e:
                        raise _qmp_failure(e, f"resize disk {serial}") from None
                return {"size": self._inserted(q, rec, disk)["image"]["virtual-size"]}
