"""The agent's commands: argument checks, per-volume exclusion, and calls into pools and the hypervisor.

`Agent.run(cmd, args, progress)` is what the server calls for `POST /v1/command`; every command is
idempotent by itself (creating an identical existing volume succeeds, deleting a missing one
succeeds, attaching an attached disk succeeds), on top of the server's request-id replay.
"""
import contextlib
import logging
import os
import re
import shutil
import subprocess
import threading
import uuid
from contextlib import contextmanager

from volstack import __version__
from volstack.agent import PROTOCOL, download, images, luks, programs
from volstack.agent.args import arg
from volstack.agent.errors import Busy, InvalidArgument
from volstack.agent.template_commands import TemplateCommands


def _nfs_driver() -> bool:
    try:
        out = subprocess.run([programs.QEMU_IMG, "--help"], capture_output=True, text=True, timeout=10).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return bool(re.search(r"Supported formats:.*\bnfs\b", out, re.S))


log = logging.getLogger("volstack.agent")


def _part(name, suffix: str = "") -> str | None:
    return images.part_name(f"{name}{suffix}") if isinstance(name, str) and name else None


def _revert(name) -> str | None:
    return f"{name}.revert" if isinstance(name, str) and name else None


class Agent(TemplateCommands):
    def __init__(self, hostname: str, hypervisor):
        self.hostname = hostname
        self.hv = hypervisor
        self._held: dict[tuple, tuple[str, bool, int]] = {}   # key -> (what, shared, holders)
        self._guard = threading.Lock()
        self._nfs = None
        self.boot = uuid.uuid4().hex          # new at every start: the management server notices a restart
        self.commands = {name.removeprefix("cmd_"): getattr(self, name) for name in dir(self)
                         if name.startswith("cmd_")}

    def hello(self) -> dict:
        if self._nfs is None:
            self._nfs = _nfs_driver()
        caps = self.hv.capabilities()
        caps["nfs_driver"] = self._nfs
        return {"protocol": PROTOCOL, "hostname": self.hostname, "hypervisor": self.hv.name,
                "version": __version__, "capabilities": caps, "boot": self.boot}

    def run(self, cmd: str, args: dict, progress=None) -> dict:
        fn = self.commands.get(cmd) if isinstance(cmd, str) else None
        if fn is None:
            raise InvalidArgument(f"unknown command {cmd!r} (this agent speaks protocol {PROTOCOL}: "
                                  f"{', '.join(sorted(self.commands))})")
        return fn(args, progress or (lambda p: None))

    def pool(self, args: dict, key: str = "pool") -> images.Pool:
        return images.open_pool(arg(args, key, dict), self.hostname)

    @contextmanager
    def hold(self, pool: images.Pool, name: str, what: str, shared: bool = False):
        """Use of one image for one operation. Exclusive holds (create, delete, resize, being written) refuse
        any other at the same time; shared ones (being read) only refuse exclusive ones."""
        key = (pool.uuid, name)
        with self._guard:
            held = self._held.get(key)
            if held is not None and not (shared and held[1]):
                raise Busy(f"volume {name} in pool {pool.uuid} is busy ({held[0]}); try again later")
            self._held[key] = (what, shared, (held[2] if held else 0) + 1)
        try:
            yield
        finally:
            with self._guard:
                what, shared, count = self._held[key]
                if count > 1:
                    self._held[key] = (what, shared, count - 1)
                else:
                    del self._held[key]

    # ---- pools

    def cmd_pool_connect(self, args, progress):
        return self.pool(args).connect()

    def cmd_pool_stats(self, args, progress):
        return self.pool(args).stats()

    def cmd_pool_disconnect(self, args, progress):
        pool = self.pool(args)
        getattr(pool, "disconnect", lambda: None)()    # e.g. an RBD pool stops its heartbeat
        return {}

    def cmd_pool_list(self, args, progress):
        return {"entries": images.list_entries(self.pool(args), arg(args, "path", str, ""))}

    # ---- volumes

    def cmd_volume_create(self, args, progress):
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        with self.hold(pool, name, "being created"):
            return images.create(pool, name, arg(args, "size", int), arg(args, "format"),
                                 arg(args, "provisioning", str, "thin"), arg(args, "encryption", dict, None))

    def cmd_volume_info(self, args, progress):
        return images.info(self.pool(args), images.check_name(arg(args, "name")), arg(args, "format"),
                           luks.check(arg(args, "encryption", dict, None)))

    def cmd_volume_import_check(self, args, progress):
        """The format and sizes of an image file to import (importVolume): probed, the one time, with links,
        backing and data files refused (unpack.check_import)."""
        return download.unpack.check_import(self.pool(args), images.check_name(arg(args, "name")))

    def cmd_volume_delete(self, args, progress):
        """Also takes a copy's partial file `.<name>.part` (the orphan scan removes abandoned ones)."""
        name = arg(args, "name")
        if isinstance(name, str) and name.startswith(".") and name.endswith(".part") and \
                images.check_name(name[1:-5]) and images.part_name(name[1:-5]) == name:
            pool = self.pool(args)
            with self.hold(pool, name[1:-5], "losing its partial copy"):
                pool.remove(name)
                return {}
        pool, name = self.pool(args), images.check_name(name)
        with self.hold(pool, name, "being deleted"):
            vm = self.hv.in_use(pool.uuid, name)
            if vm:
                raise Busy(f"volume {name} is attached to running VM {vm}; detach it or stop the VM first")
            return images.delete(pool, name)

    def cmd_volume_resize(self, args, progress):
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        with self.hold(pool, name, "being resized"):
            vm = self.hv.in_use(pool.uuid, name)
            if vm:
                raise Busy(f"volume {name} is attached to running VM {vm}; use disk_resize to resize it online")
            return images.resize(pool, name, arg(args, "size", int), arg(args, "format"),
                                 arg(args, "shrink_ok", bool, False), arg(args, "encryption", dict, None))

    def cmd_volume_clone(self, args, progress):
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        base = images.check_name(arg(args, "base"))
        with self.hold(pool, base, "being cloned", shared=True), self.hold(pool, name, "being created"):
            return images.clone(pool, base, name, arg(args, "size", int, None), arg(args, "base_format", str, "qcow2"))

    def cmd_volume_copy(self, args, progress):
        src, dst = self.pool(args, "src_pool"), self.pool(args, "dst_pool")
        src_name, dst_name = images.check_name(arg(args, "src_name")), images.check_name(arg(args, "dst_name"))
        with self.hold(src, src_name, "being copied", shared=True), self.hold(dst, dst_name, "being copied to"):
            return images.copy(src, src_name, dst, dst_name, arg(args, "format"), progress,
                               arg(args, "src_format"), speed=arg(args, "speed", int, 0),
                               src_encryption=arg(args, "src_encryption", dict, None),
                               encryption=arg(args, "encryption", dict, None))

    def cmd_volume_mirror(self, args, progress):
        dst, dst_name = self.pool(args, "dst_pool"), images.check_name(arg(args, "dst_name"))
        with self.hold(dst, dst_name, "being migrated to"):
            return self.hv.mirror(arg(args, "vm"), arg(args, "serial"), args["dst_pool"], dst_name,
                                  arg(args, "format"), progress, arg(args, "speed", int, 0),
                                  **({"encryption": args["encryption"]} if args.get("encryption") else {}))

    def cmd_volume_mirror_cancel(self, args, progress):
        return self.hv.cancel_mirror(images.check_name(arg(args, "vm")), arg(args, "serial"),
                                     arg(args, "timeout", (int, float), 30))

    # ---- guests

    def cmd_vm_start(self, args, progress):
        return self.hv.start(args)

    def cmd_vm_stop(self, args, progress):
        return self.hv.stop(images.check_name(arg(args, "name")), arg(args, "forced", bool, False),
                            arg(args, "timeout", (int, float), 10))

    def cmd_vm_reboot(self, args, progress):
        return self.hv.reboot(images.check_name(arg(args, "name")))

    def cmd_vm_destroy(self, args, progress):
        return self.hv.destroy(images.check_name(arg(args, "name")))

    def cmd_vm_list(self, args, progress):
        return self.hv.list()

    def cmd_disk_attach(self, args, progress):
        return self.hv.attach(images.check_name(arg(args, "vm")), arg(args, "disk", dict))

    def cmd_disk_detach(self, args, progress):
        return self.hv.detach(images.check_name(arg(args, "vm")), arg(args, "serial"),
                              arg(args, "timeout", (int, float), 30))

    def cmd_disk_set_qos(self, args, progress):
        return self.hv.set_qos(images.check_name(arg(args, "vm")), arg(args, "serial"), arg(args, "qos", dict, {}))

    def cmd_disk_stats(self, args, progress):
        return self.hv.stats(images.check_name(arg(args, "vm")))

    def cmd_disk_resize(self, args, progress):
        return self.hv.resize(images.check_name(arg(args, "vm")), arg(args, "serial"), arg(args, "size", int),
                              **({"encryption": args["encryption"]} if args.get("encryption") else {}))

    def cmd_cdrom_insert(self, args, progress):
        """medium: {pool, name} of an ISO image (raw) on a pool; replaces what the drive held."""
        return self.hv.insert_cd(images.check_name(arg(args, "vm")), arg(args, "medium", dict))

    def cmd_cdrom_eject(self, args, progress):
        return self.hv.eject_cd(images.check_name(arg(args, "vm")))

    # ---- live migration of a guest to another host (see agent/migration.py for the steps)

    def cmd_vm_migrate_spec(self, args, progress):
        return self.hv.migrate_spec(images.check_name(arg(args, "name")))

    def cmd_vm_migrate_prepare(self, args, progress):
        return self.hv.migrate_prepare(arg(args, "vm", dict), arg(args, "address"))

    def cmd_vm_migrate(self, args, progress):
        return self.hv.migrate(images.check_name(arg(args, "name")), arg(args, "uri"), progress,
                               arg(args, "speed", int, 0))

    def cmd_vm_migrate_finish(self, args, progress):
        return self.hv.migrate_finish(images.check_name(arg(args, "name")), arg(args, "resume", bool),
                                      arg(args, "timeout", (int, float), 60))

    def cmd_vm_migrate_abort(self, args, progress):
        return self.hv.migrate_abort(images.check_name(arg(args, "name")))

    def cmd_vm_migrate_resume(self, args, progress):
        return self.hv.migrate_resume(images.check_name(arg(args, "name")))

    # ---- after a restart

    def recover(self, cmd: str, args: dict) -> dict | None:
        """The result of a task interrupted by an agent restart if its work is verifiably complete;
        otherwise undo what it left behind and return None."""
        if cmd == "volume_copy":
            dst, name = self.pool(args, "dst_pool"), images.check_name(arg(args, "dst_name"))
            if dst.exists(images.part_name(name)):
                dst.remove(images.part_name(name))
                return None
            if dst.exists(name):
                fmt = arg(args, "format")
                have = images.info(dst, name, fmt if fmt in dst.formats else dst.formats[0])
                return {"path": name, "size": have["size"], "physical_size": have["physical_size"],
                        "format": have["format"]}
            return None
        self.remove_partials(cmd, args)
        if cmd == "volume_mirror":
            return self.hv.recover_mirror(args)
        if cmd == "vm_migrate":
            return self.hv.recover_migrate(args)
        if cmd == "template_download":
            return self._template_recover(args)
        return None

    # Every temporary name a task writes before renaming its result into place (images.part_name for copies,
    # `<name>.revert` and its part for reverts): (pool key, name) pairs. A task cut short by the agent's death
    # leaves them behind; nothing else ever uses these names, so start-up removes them.
    PARTIALS = {
        "snapshot_take": lambda a: [("pool", _part(a.get("snapshot"), ".qcow2")), ("dst_pool", _part(a.get("dst_name")))],
        "snapshot_backup": lambda a: [("dst_pool", _part(a.get("dst_name")))],
        "snapshot_revert": lambda a: [("pool", _revert(a.get("name"))), ("pool", _part(_revert(a.get("name"))))],
        "rbd_export_diff": lambda a: [("dst_pool", _part(a.get("dst_name")))],
        "rbd_restore": lambda a: [("dst_pool", _part(a.get("dst_name"))), ("dst_pool", _revert(a.get("dst_name"))),
                                  ("dst_pool", _part(_revert(a.get("dst_name"))))],
    }

    def remove_partials(self, cmd: str, args: dict) -> list[str]:
        """Remove what an interrupted task `cmd` may have left under a temporary name; the names removed."""
        removed = []
        for key, name in self.PARTIALS.get(cmd, lambda a: [])(args):
            if args.get(key) is None or name is None:
                continue
            try:
                pool = self.pool(args, key)
                if pool.exists(name):
                    pool.remove(name)
                    removed.append(name)
                    log.warning("removed %s in pool %s, left by %s cut short by the agent's restart", name,
                                pool.uuid, cmd)
            except Exception as e:          # an unreachable pool: the orphan scan reports the file later
                log.warning("cannot remove what %s left (%s in %s): %s", cmd, name, key, e)
        return removed

    def clean_work_dirs(self) -> None:
        """At start-up nothing runs yet: the scratch files of RBD backups and restores are all left-overs."""
        shutil.rmtree(self._work_dir(), ignore_errors=True)

    # ---- rbd: primitives of RBD pools (templates: issue 5 item 3, snapshots: item 4, HA heartbeat: item 6)

    def rbd_pool(self, args: dict, key: str = "pool"):
        pool = self.pool(args, key)
        if getattr(pool, "formats", None) != ("raw",) or not hasattr(pool, "clone"):
            raise InvalidArgument(f"{key} must be an RBD pool for this command")
        return pool

    def cmd_rbd_base_import(self, args, progress):
        """A template's base image, imported once from src_pool/src_name, with its protected snapshot."""
        pool, name = self.rbd_pool(args), images.check_name(arg(args, "name"))
        src, src_name = self.pool(args, "src_pool"), images.check_name(arg(args, "src_name"))
        with self.hold(pool, name, "being imported"), self.hold(src, src_name, "being copied", shared=True):
            return pool.import_base(name, lambda p, base: images.copy(
                src, src_name, p, base, "raw", progress, arg(args, "src_format")))

    def cmd_rbd_clone(self, args, progress):
        pool, name = self.rbd_pool(args), images.check_name(arg(args, "name"))
        with self.hold(pool, name, "being created"):
            return pool.clone(images.check_name(arg(args, "parent")), arg(args, "snapshot", str, "volstack-base"),
                              name, arg(args, "size", int, None), arg(args, "max_depth", int, 0))

    def cmd_rbd_flatten(self, args, progress):
        pool, name = self.rbd_pool(args), images.check_name(arg(args, "name"))
        with self.hold(pool, name, "being flattened"):
            return pool.flatten(name)

    def cmd_rbd_info(self, args, progress):
        pool, name = self.rbd_pool(args), images.check_name(arg(args, "name"))
        return {"parent": pool.parent(name), "depth": pool.depth(name), "snapshots": pool.snapshots(name)}

    def cmd_rbd_snapshot_create(self, args, progress):
        pool, name = self.rbd_pool(args), images.check_name(arg(args, "name"))
        with self.hold(pool, name, "being snapshotted", shared=True):
            return pool.snapshot_create(name, images.check_name(arg(args, "snapshot")))

    def cmd_rbd_snapshot_rollback(self, args, progress):
        pool, name = self.rbd_pool(args), images.check_name(arg(args, "name"))
        with self.hold(pool, name, "being reverted"):
            vm = self.hv.in_use(pool.uuid, name)
            if vm:
                raise Busy(f"volume {name} is attached to running VM {vm}; stop the VM to revert it")
            return pool.snapshot_rollback(name, images.check_name(arg(args, "snapshot")))

    def cmd_rbd_snapshot_delete(self, args, progress):
        pool, name = self.rbd_pool(args), images.check_name(arg(args, "name"))
        return {"removed": pool.snapshot_remove(name, images.check_name(arg(args, "snapshot")),
                                                arg(args, "flatten_children", bool, False))}

    def cmd_rbd_snapshot_purge(self, args, progress):
        """Before a volume's image is deleted: its snapshots go (clones of them are flattened)."""
        pool, name = self.rbd_pool(args), images.check_name(arg(args, "name"))
        with self.hold(pool, name, "losing its snapshots"):
            return {"removed": pool.purge_snapshots(name)}

    def _work_dir(self) -> str:
        return os.path.join(os.path.dirname(self._downloads_dir()), "rbd-work")

    def cmd_rbd_export_diff(self, args, progress):
        """Back a snapshot up to dst_pool/dst_name in `rbd export-diff` format: only the changes since
        from_snapshot while the image still has it, else the whole image (agent/rbd_snapshots.py)."""
        from volstack.agent import rbd_snapshots
        pool, name = self.rbd_pool(args), images.check_name(arg(args, "name"))
        dst, dst_name = self.pool(args, "dst_pool"), images.check_name(arg(args, "dst_name"))
        with self.hold(pool, name, "being exported", shared=True), self.hold(dst, dst_name, "being written"):
            return rbd_snapshots.export(pool, name, images.check_name(arg(args, "snapshot")),
                                        arg(args, "from_snapshot", str, None), dst, dst_name, self._work_dir(),
                                        progress)

    def cmd_rbd_restore(self, args, progress):
        """dst_pool/dst_name from backups: `chain` [{pool, name}] of export-diff files (full first), or the image
        src_pool/src_name (src_format) into an RBD image. replace: revert an existing volume."""
        from volstack.agent import rbd_snapshots
        dst, dst_name = self.pool(args, "dst_pool"), images.check_name(arg(args, "dst_name"))
        replace = arg(args, "replace", bool, False)
        with self.hold(dst, dst_name, "being restored"):
            if args.get("src_pool") is not None:
                src, src_name = self.pool(args, "src_pool"), images.check_name(arg(args, "src_name"))
                return rbd_snapshots.restore_image(self.hv, src, src_name, arg(args, "src_format"),
                                                   self.rbd_pool(args, "dst_pool"), dst_name, progress)
            chain = arg(args, "chain", list)
            if not all(isinstance(c, dict) for c in chain):
                raise InvalidArgument("chain must be a list of {pool, name}")
            files = [(self.pool(c), images.check_name(arg(c, "name"))) for c in chain]
            return rbd_snapshots.restore(self.hv, files, dst, dst_name, arg(args, "format", str, "raw"), replace,
                                         self._work_dir(), progress)

    def cmd_rbd_heartbeats(self, args, progress):
        from volstack.agent.rbd import read_heartbeats
        return {"hosts": read_heartbeats(self.rbd_pool(args))}

    # ---- browser uploads (agent/transfer.py): how the upload of one object went, for the management server

    def cmd_upload_status(self, args, progress):
        from volstack.agent import transfer
        return transfer.status(self, arg(args, "id"))

    def cmd_upload_collected(self, args, progress):
        from volstack.agent import transfer
        return transfer.collected(self, arg(args, "id"))

    # ---- snapshots (agent/snapshots.py). A primary copy is (kind, name): "internal" = a qcow2 snapshot
    # named `name` inside the volume image, "file" = the flat qcow2 `name` in the volume's pool, "delta" = an
    # incremental qcow2 `name` in the volume's pool whose header names its parent's backup.

    def cmd_snapshot_take(self, args, progress):
        from volstack.agent import snapshots
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        dst = self.pool(args, "dst_pool") if args.get("dst_pool") is not None else None
        dst_name = images.check_name(arg(args, "dst_name")) if dst is not None else None
        with self.hold(pool, name, "being snapshotted"), \
                (self.hold(dst, dst_name, "being copied to") if dst is not None else contextlib.nullcontext()):
            return snapshots.take(self.hv, pool, name, arg(args, "format"), arg(args, "snapshot"),
                                  arg(args, "vm", str, None), arg(args, "serial", str, None), progress,
                                  arg(args, "speed", int, 0), arg(args, "bitmap", str, None),
                                  arg(args, "parent", dict, None), dst, dst_name)

    def cmd_snapshot_merge(self, args, progress):
        from volstack.agent import snapshots
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        with self.hold(pool, name, "taking in its parent"):
            return snapshots.merge(pool, name, images.check_name(arg(args, "parent")), arg(args, "backing", str, None))

    def cmd_snapshot_backup(self, args, progress):
        from volstack.agent import snapshots
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        dst, dst_name = self.pool(args, "dst_pool"), images.check_name(arg(args, "dst_name"))
        with self.hold(pool, name, "being backed up", shared=True), self.hold(dst, dst_name, "being copied to"):
            return snapshots.backup(pool, name, arg(args, "format"), arg(args, "kind"), arg(args, "primary"),
                                    dst, dst_name, progress, arg(args, "out_format", str, "qcow2"))

    def cmd_snapshot_delete_primary(self, args, progress):
        from volstack.agent import snapshots
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        with self.hold(pool, name, "losing a snapshot"):
            return snapshots.delete_primary(self.hv, pool, name, arg(args, "kind"), arg(args, "primary"))

    def cmd_snapshot_revert(self, args, progress):
        """From src_pool/src_name (a qcow2), or with `snapshot`: to that internal snapshot of the image."""
        from volstack.agent import snapshots
        pool, name = self.pool(args), images.check_name(arg(args, "name"))
        if args.get("snapshot") is not None:
            with self.hold(pool, name, "being reverted"):
                return snapshots.revert_internal(self.hv, pool, name, arg(args, "snapshot"))
        src, src_name = self.pool(args, "src_pool"), images.check_name(arg(args, "src_name"))
        with self.hold(pool, name, "being reverted"), self.hold(src, src_name, "being copied", shared=True):
            return snapshots.revert(self.hv, pool, name, arg(args, "format"), src, src_name, progress)

    # ---- VM snapshots (agent/vm_snapshots.py): a qcow2 internal snapshot named `tag` in every disk of a VM

    def cmd_vm_snapshot_create(self, args, progress):
        from volstack.agent import vm_snapshots
        return vm_snapshots.run(self, "create", args, progress)

    def cmd_vm_snapshot_revert(self, args, progress):
        from volstack.agent import vm_snapshots
        return vm_snapshots.run(self, "revert", args, progress)

    def cmd_vm_snapshot_delete(self, args, progress):
        from volstack.agent import vm_snapshots
        return vm_snapshots.run(self, "delete", args, progress)
