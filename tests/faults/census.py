"""The census after a fault workload (tests/faults/workload.py): what the database, the host and the files say,
and where they disagree. Everything is counted; `clean` is true only when every count that must be zero is.

- transitional: VMs, volumes and snapshots left in a state only a running job may hold;
- pending_jobs: jobs neither finished nor failed;
- orphan_files / missing_files: files in the pools and the image store that no row names, and rows whose file
  is gone (`.part` and `.revert` left-overs count as orphans);
- host_db: guests running on the host that the database does not record Running there (or the reverse), and
  running guests whose disk set differs from the volumes the database attaches;
- data_mismatches: seeded patterns written into volumes that read back differently;
- internal_errors: answers or job results with code 530 other than a job interrupted by a management server kill
  (those are counted apart: the job did not complete and says so); tracebacks in the server's and agent's logs;
- listzones_p99_ms: the API's latency for listZones during the run (stops, detaches and copies included).
"""
import subprocess
import time
from pathlib import Path

from sqlalchemy import select

from volstack.db.engine import Database, sqlite_url
from volstack.db.image_models import ImageStore, TemplatePoolRef, TemplateStoreRef
from volstack.db.models import AsyncJob
from volstack.db.snapshot_models import Snapshot
from volstack.db.storage_models import StoragePool, VirtualMachine, Volume
from volstack.drivers.default import serial_of

TRANSITIONAL = {"vm": ("Starting", "Stopping", "Migrating", "Expunging"),
                "volume": ("Creating", "Migrating", "Resizing", "Attaching", "Snapshotting", "RevertSnapshotting",
                           "Expunging", "Copying", "UploadOp"),
                "snapshot": ("Allocated", "Creating", "BackingUp", "Copying", "Destroying")}
MUST_BE_ZERO = ("transitional", "pending_jobs", "orphan_files", "missing_files", "host_db", "data_mismatches",
                "internal_errors", "tracebacks")


def pool_dir(root: Path, pool_type: str, path: str) -> Path:
    """The local directory of a workload pool (the NFS pool's export directory is on this machine too)."""
    return root / "nfs" if pool_type == "NetworkFilesystem" else Path(path)


def _files(d: Path) -> set[str]:
    return {str(p.relative_to(d)) for p in d.rglob("*") if p.is_file()} if d.exists() else set()


def _quiesce(db, timeout=300) -> int:
    deadline = time.monotonic() + timeout
    while True:
        with db.session(readonly=True) as s:
            pending = len(list(s.scalars(select(AsyncJob.id).where(AsyncJob.status == 0))))
        if not pending or time.monotonic() > deadline:
            return pending
        time.sleep(0.5)


def take(rig, workload) -> dict:
    db = Database(sqlite_url(rig.root))
    out = {"pending_jobs": _quiesce(db)}
    # a few host checks (reconciliation of the host and the database runs on them) and the transitional sweep
    # (settle_after_seconds=5 in msproc): what they settle is theirs to settle, what is left is counted
    time.sleep(12)
    out["pending_jobs"] = _quiesce(db, 30)
    with db.session(readonly=True) as s:
        vms = list(s.scalars(select(VirtualMachine).where(VirtualMachine.removed.is_(None))))
        vols = list(s.scalars(select(Volume).where(Volume.removed.is_(None))))
        snaps = list(s.scalars(select(Snapshot).where(Snapshot.removed.is_(None))))
        pools = {p.id: p for p in s.scalars(select(StoragePool).where(StoragePool.state != "Removed"))}
        stores = {st.id: st for st in s.scalars(select(ImageStore).where(ImageStore.removed.is_(None)))}
        pool_refs = list(s.scalars(select(TemplatePoolRef)))
        store_refs = list(s.scalars(select(TemplateStoreRef)))
    out["transitional"] = [f"vm {v.name} {v.state}" for v in vms if v.state in TRANSITIONAL["vm"]] + \
        [f"volume {v.name} {v.state}" for v in vols if v.state in TRANSITIONAL["volume"]] + \
        [f"snapshot {x.name} {x.state}" for x in snaps if x.state in TRANSITIONAL["snapshot"]]
    out.update(_files_census(rig.root, pools, stores, vols, snaps, pool_refs, store_refs))
    out["host_db"] = _host_census(rig, vms, vols)
    out["data_mismatches"], out["data_checked"] = _data_census(rig.root, workload, vols, vms, pools)
    codes = {str(k): v for k, v in workload.api.codes.items()}
    out["answers"] = codes
    out["internal_errors"] = [e for e in workload.api.errors if e[1] == 530 and "interrupted because the management "
                              "server running it stopped" not in e[2]]
    out["interrupted_jobs"] = sum(1 for e in workload.api.errors if e[1] == 530) - len(out["internal_errors"])
    logs = [rig.ms_log] + [Path(a.log.name) for a in rig.agents]
    out["tracebacks"] = [tb for p in logs if p.exists() for tb in _tracebacks(p)]
    lat = sorted(workload.latency)
    out["listzones_p99_ms"] = round(lat[int(len(lat) * 0.99) - 1] * 1000, 1) if lat else None
    out["listzones_max_ms"] = round(lat[-1] * 1000, 1) if lat else None
    out["listzones_samples"] = len(lat)
    stops = sorted(workload.latency_stops)      # while a stopVirtualMachine or detachVolume job ran
    out["listzones_p99_ms_during_stop_detach"] = round(stops[max(0, int(len(stops) * 0.99) - 1)] * 1000, 1) \
        if stops else None
    out["listzones_samples_during_stop_detach"] = len(stops)
    out["operations"] = sum(1 for e in workload.log if e[0] not in ("kill", "skip"))
    out["failed_operations"] = sum(1 for e in workload.log if e[0] not in ("kill", "skip", "write") and e[2])
    out["failures"] = sorted({f"{e[0]} {e[2]}: {e[3]}" for e in workload.log
                              if e[0] not in ("kill", "skip", "write") and e[2]})
    out["clean"] = all(not out[k] for k in MUST_BE_ZERO)
    return out


def _tracebacks(path: Path) -> list[str]:
    """Each traceback in a log as 'the line before it … the exception line'."""
    lines, out = path.read_text(errors="replace").splitlines(), []
    for i, line in enumerate(lines):
        if line.startswith("Traceback"):
            end = next((j for j in range(i + 1, len(lines)) if not lines[j].startswith(" ")), len(lines) - 1)
            out.append(f"{path.name}: {lines[i - 1][:160] if i else ''} … {lines[end][:200]}")
    return out


def _files_census(root, pools, stores, vols, snaps, pool_refs, store_refs) -> dict:
    named = {}          # local directory -> names the database gives files there
    dirs = {}
    for p in pools.values():
        dirs[p.id] = pool_dir(root, p.pool_type, p.path)
    for st in stores.values():
        dirs[("store", st.id)] = root / "images"
    for d in dirs.values():
        named.setdefault(d, set())
    missing = []
    for v in vols:
        if v.pool_id in dirs and v.path and v.state not in ("Allocated", "Expunged"):
            named[dirs[v.pool_id]].add(v.path)
            if v.state in ("Ready", "Destroy") and not (dirs[v.pool_id] / v.path).exists():
                missing.append(f"volume {v.name} ({v.state}): {v.path}")
    for r in pool_refs:
        if r.pool_id in dirs:
            named[dirs[r.pool_id]].add(r.install_path)
    for x in snaps:
        if x.pool_id in dirs and x.primary_name and x.primary_kind in ("file", "delta"):
            named[dirs[x.pool_id]].add(x.primary_name)
        if ("store", x.store_id) in dirs and x.install_path:
            named[dirs[("store", x.store_id)]].add(x.install_path)
            if x.state == "BackedUp" and not (dirs[("store", x.store_id)] / x.install_path).exists():
                missing.append(f"snapshot {x.name} backup: {x.install_path}")
    for r in store_refs:
        if ("store", r.store_id) in dirs and r.install_path:
            named[dirs[("store", r.store_id)]].add(r.install_path)
    orphans = []
    for d, names in named.items():
        for f in sorted(_files(d)):
            if f not in names and not f.startswith("volstack.heartbeat"):
                orphans.append(f"{d.name}/{f}")
    return {"orphan_files": orphans, "missing_files": missing}


def _host_census(rig, vms, vols) -> list[str]:
    from volstack.db.models import Host
    db = Database(sqlite_url(rig.root))
    with db.session(readonly=True) as s:
        host_ids = {h.name: h.id for h in s.scalars(select(Host))}
    diffs = []
    for agent in rig.agents:
        try:
            guests = {g["name"]: g for g in agent.client.call("vm_list")["vms"] if g["state"] == "Running"}
        except Exception as e:
            diffs.append(f"agent {agent.name} did not list its guests: {e}")
            continue
        here = [v for v in vms if v.host_id == host_ids.get(agent.name) or v.state != "Running"]
        diffs += [f"{agent.name}: {d}" for d in _guests_vs_db(guests, here, vols)]
    return diffs


def _guests_vs_db(guests, vms, vols) -> list[str]:
    diffs = []
    running = {v.uuid: v for v in vms if v.state == "Running"}
    for name in sorted(set(guests) - set(running)):
        recorded = next((v for v in vms if v.uuid == name), None)
        diffs.append(f"guest {name} runs on the host; the database says "
                     f"{recorded.state if recorded else 'nothing (no such VM)'}")
    for uuid in sorted(set(running) - set(guests)):
        diffs.append(f"VM {running[uuid].name} is Running in the database; the host does not run it")
    for uuid in sorted(set(running) & set(guests)):
        want = {serial_of(v) for v in vols if v.vm_id == running[uuid].id and v.state not in ("Allocated",)}
        have = set(guests[uuid]["disks"])
        if want != have:
            diffs.append(f"VM {running[uuid].name}: host disks {sorted(have)}, database {sorted(want)}")
    return diffs


def _data_census(root, workload, vols, vms, pools) -> tuple[list[str], int]:
    by_uuid = {v.uuid: v for v in vols}
    running = {v.id for v in vms if v.state == "Running"}
    bad, checked = [], 0
    for vol_uuid, writes in workload.expected.items():
        v = by_uuid.get(vol_uuid)
        if v is None or v.state != "Ready" or v.vm_id in running or v.pool_id not in pools or not writes:
            continue
        path = pool_dir(root, pools[v.pool_id].pool_type, pools[v.pool_id].path) / v.path
        last = {}
        for off, pat in writes:          # a later write at the same offset wins
            last[off] = pat
        for off, pat in last.items():
            r = subprocess.run(["qemu-io", "-r", "-U", "-f", v.format.lower(), "-c", f"read -P {pat} {off} 1M",
                                str(path)], capture_output=True, text=True)
            checked += 1
            if r.returncode or "Pattern verification failed" in r.stdout or "error" in r.stdout.lower():
                bad.append(f"volume {v.name} at {off >> 20} MiB: expected byte {pat}: {(r.stdout + r.stderr)[-120:]}")
    return bad, checked


def summary(r: dict) -> str:
    keys = ("seed", "ops", "kills", "seconds", "clean", "operations", "failed_operations", "interrupted_jobs",
            "listzones_p99_ms", "listzones_max_ms", "listzones_p99_ms_during_stop_detach",
            "listzones_samples_during_stop_detach", "data_checked")
    head = " ".join(f"{k}={r.get(k)}" for k in keys)
    body = [f"  {k}: {len(r[k]) if isinstance(r[k], list) else r[k]}" + (
        "".join(f"\n    - {x}" for x in r[k][:20]) if isinstance(r[k], list) and r[k] else "")
        for k in MUST_BE_ZERO]
    failures = "".join(f"\n    - {x}" for x in r.get("failures", [])[:30])
    return head + f"\n  answers: {r['answers']}\n" + "\n".join(body) + f"\n  failed operations (CloudStack errors):{failures}"
