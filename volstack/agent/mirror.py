"""Live storage migration of an attached disk, for the qemu adapter (a mixin of QemuHypervisor).

`mirror` opens the new image (an RBD pool's key goes in as a QMP secret object first), runs
blockdev-mirror (sync full) and, once the job is ready, job-complete: QEMU switches the guest to the copy
atomically, and the old node is deleted. The record keeps the mirror under way (`rec["mirror"]`), so a
restarted agent finishes or undoes it (`recover_mirror`), and a management server whose job died asks
`cancel_mirror` where the disk is. Any failure before the switch leaves the guest on its old image and
removes the copy.
"""
import time

from volstack.agent import images, luks
from volstack.agent.errors import Busy, Failed, InvalidArgument
from volstack.agent.qmp import QmpError


class QemuMirror:

    def _not_mirroring(self, vm: str, serial: str) -> None:
        if (vm, serial) in self._mirroring:
            raise Busy(f"disk {serial} of VM {vm} is being migrated; try again when the migration has finished")


    def mirror(self, vm: str, serial: str, dst_spec: dict, dst_name: str, fmt: str, progress=None,
               speed: int = 0, encryption=None) -> dict:
        """Live storage migration of an attached disk: blockdev-mirror to a new image, pivot when in sync.
        speed: bytes per second to limit the copy to (0: as fast as possible). encryption: the disk is
        encrypted; the new image is made and opened with the same passphrase."""
        dst = images.open_pool(dst_spec, self.hostname)
        images.check_name(dst_name), images.check_format(fmt)
        enc = luks.check(encryption)
        with self._lock(vm):
            rec = self._running(self._need(vm))
            disk = self._disk(rec, serial)
            self._not_mirroring(vm, serial)
            if disk["pool_uuid"] == dst.uuid and disk["name"] == dst_name:
                return {"path": dst_name, "serial": serial}
            with self._qmp(rec) as q:
                size = self._inserted(q, rec, disk)["image"]["virtual-size"]
            if disk.get("encryption") and not enc:
                raise InvalidArgument(f"disk {serial} is encrypted: its new image must be too (give encryption)")
            images.create(dst, dst_name, size, fmt, "thin", enc)
            self._mirroring.add((vm, serial))
        try:
            return self._mirror(vm, serial, dst, dst_spec, dst_name, fmt, progress or (lambda p: None), speed, enc)
        finally:
            self._mirroring.discard((vm, serial))
            self._cancelled.discard((vm, serial))

    def _mirror(self, vm, serial, dst, dst_spec, dst_name, fmt, progress, speed, enc=None) -> dict:
        job = f"mirror-{serial}"
        with self._lock(vm):
            rec = self._need(vm)
            disk = self._disk(rec, serial)
            node = self._new_node(rec)
            rec["mirror"] = {"serial": serial, "job": job, "node": node, "pool": dst_spec, "name": dst_name,
                             "format": fmt}
            self._save(rec)
            try:
                with self._qmp(rec) as q:
                    self._add_objects(q, dst)
                    target = {"name": dst_name, "format": fmt, "encryption": enc}
                    q.execute("blockdev-add", {"node-name": node, **self._format_node(q, target, dst, fresh=True)})
                    q.execute("blockdev-mirror", {"job-id": job, "device": disk["node"], "target": node,
                                                  "sync": "full", "auto-dismiss": False,
                                                  **({"speed": speed} if speed > 0 else {})})
            except (QmpError, Failed) as e:
                self._abort_mirror(rec)
                raise Failed(f"cannot start migrating disk {serial}: {e}") from None
        completed, error = False, None
        try:
            while error is None:
                with self._lock(vm), self._qmp(rec) as q:
                    state = next((j for j in q.execute("query-jobs") if j["id"] == job), None)
                    if (vm, serial) in self._cancelled and not completed:
                        error = "cancelled because the management server that asked for it stopped"
                    elif state is None:
                        error = "the mirror job vanished"
                    elif state["status"] == "concluded":
                        error = state.get("error") or ""
                        q.execute("job-dismiss", {"id": job})
                        break
                    elif state["status"] == "ready" and not completed:
                        q.execute("job-complete", {"id": job})
                        completed = True
                    total = (state or {}).get("total-progress") or 0
                    if total:
                        progress(min(99, int(state["current-progress"] * 100 / total)))
                time.sleep(0.1)
        except Exception as e:   # QEMU died or refused: clean up below
            error = str(e) or type(e).__name__
        with self._lock(vm):
            rec = self._need(vm)
            if not error:
                try:
                    with self._qmp(rec) as q:
                        if self._inserted(q, rec, rec["disks"][serial])["node-name"] != rec["mirror"]["node"]:
                            error = "the disk did not switch to the new image"
                except Failed as e:
                    error = e.text
            if error:
                self._abort_mirror(rec)
                raise Failed(f"migrating disk {serial} of VM {vm} failed: {error}")
            return self._finish_mirror(rec)

    def _finish_mirror(self, rec: dict) -> dict:
        m = rec.pop("mirror")
        disk = rec["disks"][m["serial"]]
        old = disk["node"]
        with self._qmp(rec) as q:
            try:
                q.execute("job-dismiss", {"id": m["job"]})
            except QmpError:
                pass   # normally dismissed already
            self._del_node(q, old)
        disk.update({"pool": m["pool"], "pool_uuid": m["pool"].get("uuid"), "name": m["name"], "format": m["format"],
                     "node": m["node"]})
        self._save(rec)
        return {"path": m["name"], "serial": m["serial"]}

    def _abort_mirror(self, rec: dict) -> None:
        m = rec.pop("mirror", None)
        if m is None:
            return
        try:
            with self._qmp(rec) as q:
                try:
                    q.execute("block-job-cancel", {"device": m["job"], "force": True})
                except QmpError:
                    pass
                deadline = time.monotonic() + 10
                while time.monotonic() < deadline:
                    job = next((j for j in q.execute("query-jobs") if j["id"] == m["job"]), None)
                    if job is None:
                        break
                    if job["status"] == "concluded":
                        q.execute("job-dismiss", {"id": m["job"]})
                    time.sleep(0.05)
                self._del_node(q, m["node"])
        except Failed:
            pass   # the guest is gone, and so are its jobs and nodes
        try:
            images.delete(images.open_pool(m["pool"], self.hostname), m["name"])
        except Exception:
            pass
        self._save(rec)

    def recover_mirror(self, args: dict) -> dict | None:
        """After an agent restart: the result if the pivot happened, else cancel and clean up."""
        vm = args.get("vm")
        with self._lock(vm):
            rec = self._load(vm)
            if rec is None or "mirror" not in rec:
                return None
            m = rec["mirror"]
            if self._pid(rec):
                with self._qmp(rec) as q:
                    try:
                        pivoted = self._inserted(q, rec, rec["disks"][m["serial"]])["node-name"] == m["node"]
                    except Failed:
                        pivoted = False
                if pivoted:
                    return self._finish_mirror(rec)
            self._abort_mirror(rec)
            return None

    def cancel_mirror(self, vm: str, serial: str, timeout: float = 30) -> dict:
        """For a management server settling a live migration whose job died with its server: stop the disk's
        mirror unless the switch to the copy has begun, wait for it to end (the copy is then removed), and say
        which image the guest uses now: {"pool_uuid", "name", "format"}."""
        self._disk(self._need(vm), serial)
        if (vm, serial) in self._mirroring:
            self._cancelled.add((vm, serial))
            deadline = time.monotonic() + timeout
            while (vm, serial) in self._mirroring:
                if time.monotonic() >= deadline:
                    raise Busy(f"the migration of disk {serial} of VM {vm} did not stop within {timeout:.0f} s")
                time.sleep(0.05)
        with self._lock(vm):
            disk = self._disk(self._need(vm), serial)
            return {"pool_uuid": disk["pool_uuid"], "name": disk["name"], "format": disk["format"]}
