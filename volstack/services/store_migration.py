"""Moving objects between image stores: migrateSecondaryStorageData (Complete or Balance) and
migrateResourceToAnotherSecondaryStorage (chosen templates and snapshots).

CloudStack spawns extra secondary-storage VMs when copies queue up; volstack runs the copies on a
zone host agent, at most `secstorage.max.migrate.sessions` at once, inside one job that reports its
progress. Each object is copied, repointed in the database, then deleted from the source, so an
interrupted migration leaves every object whole on one store or the other.
"""
import logging
import statistics
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from sqlalchemy import select

from volstack.db.image_models import ImageStore, Template, TemplateStoreRef
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InvalidParameter
from volstack.services import events, imagestores, settings as S
from volstack.services.context import require_root_admin

log = logging.getLogger("volstack.imagestores")
COPY_FORMAT = {"QCOW2": "qcow2", "RAW": "raw", "ISO": "raw"}   # ISOs are copied byte for byte


class Item:
    """One object on a store that can move: a template copy (snapshot backups add their own kind)."""
    def __init__(self, kind, ref_id, uuid, name, path, size, fmt):
        self.kind, self.ref_id, self.uuid, self.name, self.path, self.size, self.fmt = \
            kind, ref_id, uuid, name, path, size or 0, fmt


def template_items(s, store) -> list[Item]:
    rows = s.execute(select(TemplateStoreRef, Template).join(Template, Template.id == TemplateStoreRef.template_id)
                     .where(TemplateStoreRef.store_id == store.id, TemplateStoreRef.state == "Ready"))
    return [Item("template", ref.id, t.uuid, t.name, ref.install_path, ref.physical_size or ref.size, t.format)
            for ref, t in rows]


def repoint_template(s, item: Item, src, dst) -> bool:
    """After the copy: the ref moves to dst (or, if dst already had a copy, the source ref goes)."""
    ref = s.get(TemplateStoreRef, item.ref_id)
    twin = s.scalar(select(TemplateStoreRef).where(TemplateStoreRef.template_id == ref.template_id,
                                                   TemplateStoreRef.store_id == dst.id))
    if twin is not None and twin.state == "Ready":
        ref.state = "Destroyed"
    else:
        if twin is not None:
            s.delete(twin)
            s.flush()
        ref.store_id = dst.id
    return True


KINDS = {"template": (template_items, repoint_template)}


def plan_balance(src, dests, items: list[Item], held: dict, threshold: float) -> list[tuple[Item, ImageStore]]:
    """Largest objects first, each to the least-utilised destination, while the standard deviation of the
    stores' utilisation (bytes of volstack objects / capacity, so stores sharing a filesystem still compare)
    is above the threshold and the move lowers it."""
    stores = [src, *dests]
    used = dict(held)

    def util(u, st):
        return u[st.id] / st.capacity_bytes if st.capacity_bytes else 1.0

    def spread(u):
        return statistics.pstdev([util(u, st) for st in stores])
    plan = []
    for item in sorted(items, key=lambda i: -i.size):
        if spread(used) <= threshold:
            break
        dst = min(dests, key=lambda st: util(used, st))
        after = dict(used)
        after[src.id] -= item.size
        after[dst.id] += item.size
        if spread(after) < spread(used):
            plan.append((item, dst))
            used = after
    return plan


def plan_complete(src, dests, items: list[Item]) -> list[tuple[Item, ImageStore]]:
    free = {st.id: (st.capacity_bytes or 0) - (st.used_bytes or 0) for st in dests}
    plan = []
    for item in sorted(items, key=lambda i: -i.size):
        dst = max(dests, key=lambda st: free[st.id])
        free[dst.id] -= item.size
        plan.append((item, dst))
    return plan


def _items(s, store) -> list[Item]:
    return [i for lister, _ in KINDS.values() for i in lister(s, store)]


def _check(s, ctx, src, dests) -> None:
    require_root_admin(ctx)
    if not dests:
        raise InvalidParameter("Pass at least one destination image store")
    for d in dests:
        if d.id == src.id:
            raise InvalidParameter(f"Image store {d.name} cannot be both the source and a destination")
        if d.readonly:
            raise InvalidParameter(f"Image store {d.name} is read-only; it cannot receive migrated data")
        if d.zone_id != src.zone_id:
            raise InvalidParameter(f"Image stores {src.name} and {d.name} are in different zones")


def migrate_data(s, ctx, src: ImageStore, dests: list[ImageStore], policy: str, progress=None) -> dict:
    policy = (policy or "Complete").capitalize()
    if policy not in ("Complete", "Balance"):
        raise InvalidParameter("migrationtype must be Complete or Balance")
    _check(s, ctx, src, dests)
    items = _items(s, src)
    if policy == "Balance":
        held = {st.id: sum(i.size for i in _items(s, st)) for st in [src, *dests]}
        plan = plan_balance(src, dests, items, held, S.Settings.value_in(s, S.IMBALANCE_THRESHOLD))
    else:
        plan = plan_complete(src, dests, items)
    return _run(s, ctx, src, plan, policy, progress)


def migrate_resources(s, ctx, src: ImageStore, dst: ImageStore, template_uuids=(), snapshot_uuids=(),
                      progress=None) -> dict:
    _check(s, ctx, src, [dst])
    if snapshot_uuids and "snapshot" not in KINDS:
        raise InvalidParameter("Snapshot backups are not stored on image stores by this server version")
    wanted = set(template_uuids or ()) | set(snapshot_uuids or ())
    items = [i for i in _items(s, src) if i.uuid in wanted]
    missing = wanted - {i.uuid for i in items}
    if missing:
        raise InvalidParameter(f"Not on image store {src.name} (or not ready): {', '.join(sorted(missing))}")
    return _run(s, ctx, src, [(i, dst) for i in items], "Complete", progress)


def _run(s, ctx, src, plan, policy, progress) -> dict:
    if not plan:
        return {"migrationtype": policy, "success": True, "message": "Nothing to migrate: the stores are balanced"
                if policy == "Balance" else f"Image store {src.name} holds no objects"}
    host = imagestores.host_for(s, src)
    sessions = max(1, S.Settings.value_in(s, S.MAX_MIGRATE_SESSIONS))
    src_spec = imagestores.spec(src)
    s.commit()                     # no lock held while the copies run

    def copy(item, dst_spec):
        fmt = COPY_FORMAT.get(item.fmt, "qcow2")
        return run_long(channel(host), "volume_copy", None, src_pool=src_spec, src_name=item.path, src_format=fmt,
                        dst_pool=dst_spec, dst_name=item.path, format=fmt)
    failed, done = [], 0
    with ThreadPoolExecutor(max_workers=sessions) as pool:
        pending = {pool.submit(copy, item, imagestores.spec(dst)): (item, dst) for item, dst in plan}
        while pending:
            finished, _ = wait(pending, return_when=FIRST_COMPLETED)
            for fut in finished:
                item, dst = pending.pop(fut)
                try:
                    fut.result()
                    KINDS[item.kind][1](s, item, src, dst)
                    s.commit()
                    channel(host).call("volume_delete", pool=src_spec, name=item.path)
                    done += 1
                except CloudError as exc:
                    failed.append(f"{item.kind} {item.name}: {exc.text}")
                if progress:
                    progress(int(100 * (done + len(failed)) / len(plan)))
    text = f"Migrated {done} of {len(plan)} objects from {src.name}" + (f"; failed: {'; '.join(failed)}" if failed else "")
    events.record(s, ctx, "IMAGE.STORE.MIGRATE.DATA", text, level="ERROR" if failed else "INFO",
                  resource_type="ImageStore", resource_uuid=src.uuid)
    return {"migrationtype": policy, "success": not failed, "message": text}
