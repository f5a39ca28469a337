"""The CD-ROM drive of a qemu guest (a mixin of QemuHypervisor): attachIso / detachIso.

Every guest is started with one empty ide-cd drive (`cd0`) on the q35 machine's built-in AHCI
controller: an IDE CD drive cannot be hot-plugged, but its medium can be changed at any time. An ISO
goes in as a read-only raw node opened from its pool (file, nfs:// or rbd, like any volume) with
blockdev-open-tray (forced: a guest that locked the tray is overridden) / blockdev-insert-medium /
blockdev-close-tray; it comes out the same way with blockdev-remove-medium. The record keeps the medium
(`rec["cdrom"]`), so a live migration opens the same ISO on the destination before the guest arrives.
"""
from volstack.agent import hypervisor as hv
from volstack.agent import images
from volstack.agent.errors import Failed, NotFound
from volstack.agent.qmp import QmpError

CD = "cd0"


def cd_device(boot: str | None) -> list[str]:
    """The drive's command-line device; it boots first with boot=cdrom, after the root disk with boot=disk."""
    index = {"cdrom": ",bootindex=0", "disk": ",bootindex=1"}.get(boot, "")
    return ["-device", f"ide-cd,id={CD},bus=ide.0{index}"]


class QemuCdrom:

    def _check_medium_exists(self, medium: dict) -> None:
        if not images.open_pool(medium["pool"], self.hostname).exists(medium["name"]):
            raise NotFound(f"ISO image {medium['name']} does not exist in pool {medium['pool_uuid']} as seen from "
                           f"host {self.hostname}")

    def _insert(self, q, rec: dict, medium: dict | None) -> None:
        """Put medium in the drive (None: empty it), replacing what was there."""
        node = None
        if medium is not None:
            pool = images.open_pool(medium["pool"], self.hostname)
            node = self._new_node(rec)
            try:
                self._add_objects(q, pool)
                q.execute("blockdev-add", {"driver": "raw", "node-name": node, "read-only": True,
                                           "file": pool.blockdev(medium["name"])})
            except QmpError as e:
                raise Failed(f"QEMU cannot open ISO {medium['name']} of pool {medium['pool_uuid']}: {e.desc}") from None
        old = (rec.get("cdrom") or {}).get("node")
        try:
            q.execute("blockdev-open-tray", {"id": CD, "force": True})
            q.execute("blockdev-remove-medium", {"id": CD})       # nothing to do on an empty drive
            if node:
                q.execute("blockdev-insert-medium", {"id": CD, "node-name": node})
            q.execute("blockdev-close-tray", {"id": CD})
        except QmpError as e:
            if node:
                self._del_node(q, node)
            raise Failed(f"QEMU cannot change the CD of VM {rec['name']}: {e.desc}") from None
        if old:
            self._del_node(q, old)
        rec["cdrom"] = {**medium, "node": node} if medium else None

    def insert_cd(self, vm: str, medium: dict) -> dict:
        m = hv.check_medium(medium, self.hostname)
        if m is None:
            return self.eject_cd(vm)
        with self._lock(vm):
            rec = self._need(vm)
            have = rec.get("cdrom")
            if have and hv.same_image(have, m) and (have.get("node") or not self._pid(rec)):
                return {"cdrom": m["name"]}
            self._check_medium_exists(m)
            if self._pid(rec):
                with self._qmp(rec) as q:
                    self._insert(q, rec, m)
            else:
                rec["cdrom"] = {**m, "node": None}
            self._save(rec)
            return {"cdrom": m["name"]}

    def eject_cd(self, vm: str) -> dict:
        with self._lock(vm):
            rec = self._need(vm)
            if rec.get("cdrom") and self._pid(rec):
                with self._qmp(rec) as q:
                    self._insert(q, rec, None)
            rec["cdrom"] = None
            self._save(rec)
            return {"cdrom": None}
