"""Templates on primary storage: the first ROOT volume from a template on a pool seeds one cached copy
there (from the zone's image store, or straight from the source URL for direct-download templates);
every ROOT volume on that pool is a linked clone of it. ISOs are cached the same way (raw) for the VMs
they are attached to (services/isos.py). Unused copies are garbage-collected.

Concurrent deploys of one template to one pool seed it exactly once: the template_spool_ref row is
inserted (unique on template and pool) and committed before any copying; whoever loses the insert
waits for the winner's copy to become Ready.
"""
import logging
import time
from datetime import timedelta

from sqlalchemy import select, update
from sqlalchemy.exc import IntegrityError

from volstack.db import aggregate, counters
from volstack.db.image_models import ImageStore, Template, TemplatePoolRef
from volstack.db.models import Host, utcnow
from volstack.db.storage_models import StoragePool, VirtualMachine, Volume
from volstack.drivers import driver_for
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InvalidParameter, ResourceUnavailable
from volstack.services import encryption, events, imagestores, pools, settings as S, templates, volumes

log = logging.getLogger("volstack.templates")
POLL_SECONDS = 0.25      # waiting for another job's copy: that job commits its progress as it goes
STALE_SEED = timedelta(minutes=10)   # a seeding copy that reported no progress for this long is abandoned
ASK_HOSTS_AFTER = timedelta(seconds=15)   # a seed silent this long: the hosts say whether its copy still runs


def cache_name(t: Template) -> str:
    return f"tmpl-{t.uuid}"


def seed(s, ctx, t: Template, pool: StoragePool, host: Host, progress=None) -> TemplatePoolRef:
    """The Ready cached copy of t on pool, seeding it now if nobody has. Commits as it goes."""
    deadline = time.monotonic() + S.Settings.value_in(s, S.PRIMARY_DOWNLOAD_WAIT)
    asked = False
    while True:
        ref = s.scalar(select(TemplatePoolRef).where(TemplatePoolRef.template_id == t.id,
                                                     TemplatePoolRef.pool_id == pool.id)
                       .execution_options(populate_existing=True))
        if ref is not None and ref.state == "Ready":
            if t.direct_download and _source_changed(s, ctx, t, pool, host, ref):
                return _refresh(s, ctx, t, pool, host, ref, progress)
            ref.last_used = utcnow()
            return ref
        if ref is None:
            ref = TemplatePoolRef(template_id=t.id, pool_id=pool.id, install_path=cache_name(t))
            s.add(ref)
            try:
                s.commit()
            except IntegrityError:
                s.rollback()           # another job inserted it first: wait for its copy
                continue
            return _copy(s, ctx, t, pool, host, ref, progress)
        # A copy that failed earlier is tried again; one whose seeding job died with its server (no progress
        # for STALE_SEED) is taken over. The conditional UPDATE lets exactly one waiter do it.
        stale = ref.state == "Creating" and ref.last_used < utcnow() - STALE_SEED
        if ref.state == "Creating" and not stale and ref.last_used < utcnow() - ASK_HOSTS_AFTER and not asked:
            asked = True         # once per wait: a seed whose job died with its server need not wait STALE_SEED
            found = _seed_on_hosts(s, pool, ref)
            if found is not None and found.get("state") == "done":
                return _adopt(s, ctx, t, pool, ref, found.get("result") or {})
            stale = found is not None and found.get("state") in ("failed", "unknown")
        if ref.state == "Failed" or stale:
            won = s.execute(update(TemplatePoolRef).where(TemplatePoolRef.id == ref.id,
                                                          TemplatePoolRef.state == ref.state,
                                                          TemplatePoolRef.last_used == ref.last_used)
                            .values(state="Creating", download_state="DOWNLOAD_IN_PROGRESS", download_pct=0,
                                    error=None, last_used=utcnow())).rowcount == 1
            s.commit()
            if won:
                s.refresh(ref)
                return _copy(s, ctx, t, pool, host, ref, progress)
            continue
        if time.monotonic() > deadline:
            raise ResourceUnavailable(f"Template {t.name} is still being copied to storage pool {pool.name} after "
                                      "primary.storage.download.wait seconds")
        s.commit()                      # end the read transaction so the next look sees the other job's commit
        time.sleep(POLL_SECONDS)


def _seed_on_hosts(s, pool: StoragePool, ref: TemplatePoolRef) -> dict | None:
    """The state of the latest copy to ref on the hosts that reach the pool (task_find; no transaction open while
    they answer): a running one wins, else a finished one whose image is there, else "unknown"/"failed"; None when
    a host could not answer."""
    chans = [channel(h) for h in pools.hosts_in_scope(s, pool)]
    match = {"dst_pool": pool.uuid, "dst_name": ref.install_path}
    spec, fmt = driver_for(pool.provider).spec(pool), templates.FORMATS.get(s.get(Template, ref.template_id).format)
    s.commit()
    answers = []
    for ch in chans:
        try:
            found = ch.call("task_find", command="volume_copy", match=match)
        except CloudError:
            return None                            # a host that cannot answer may still be copying: keep waiting
        if found.get("state") == "done":           # and its copy is still there (a later delete would not say)
            try:
                found["result"] = {**(found.get("result") or {}),
                                   **ch.call("volume_info", pool=spec, name=ref.install_path, format=fmt)}
            except CloudError:
                found = {"state": "unknown"}
        answers.append(found)
    for state in ("running", "done"):
        hit = next((a for a in answers if a.get("state") == state), None)
        if hit is not None:
            return hit
    return answers[-1] if answers else None


def _adopt(s, ctx, t: Template, pool: StoragePool, ref: TemplatePoolRef, res: dict) -> TemplatePoolRef:
    """A seed whose copy finished on the host after its job died: the copy is recorded, not made again."""
    won = s.execute(update(TemplatePoolRef).where(TemplatePoolRef.id == ref.id, TemplatePoolRef.state == "Creating")
                    .values(state="Ready", download_state="DOWNLOADED", download_pct=100, size=res.get("size"),
                            physical_size=res.get("physical_size"), last_used=utcnow(), error=None)).rowcount == 1
    if won:
        events.record(s, ctx, "TEMPLATE.SEED", f"The copy of template {t.name} on {pool.name} had finished on its "
                      "host after the job seeding it stopped; it is adopted", level="WARN", resource_type="Template",
                      resource_uuid=t.uuid)
    s.commit()
    s.refresh(ref)
    return ref


def _copy(s, ctx, t: Template, pool: StoragePool, host: Host, ref: TemplatePoolRef, progress) -> TemplatePoolRef:
    drv = driver_for(pool.provider)

    def report(pct):
        ref.download_pct, ref.last_used = int(pct), utcnow()     # last_used doubles as the seeder's heartbeat
        if progress:
            progress(max(1, int(pct) // 2))
        else:
            s.commit()
    try:
        if t.direct_download:
            res = _direct_download(s, t, pool, host, ref, report)
        else:
            src = templates.ready_in_zone(s, t, pool.zone_id)
            if src is None:
                raise ResourceUnavailable(f"Template {t.name} is not ready in the zone of storage pool {pool.name} "
                                          "(see its status in listTemplates)")
            store = s.get(ImageStore, src.store_id)
            res = run_long(channel(host), "volume_copy", report, src_pool=imagestores.spec(store),
                           src_name=src.install_path, src_format=templates.FORMATS[t.format],
                           dst_pool=drv.spec(pool), dst_name=ref.install_path, format=templates.FORMATS[t.format])
    except CloudError as exc:
        s.rollback()
        failed = s.get(TemplatePoolRef, ref.id)     # kept (it may own superseded copies); the next deploy retries
        failed.state, failed.download_state, failed.error = "Failed", "DOWNLOAD_ERROR", exc.text
        s.commit()
        events.record(s, ctx, "TEMPLATE.SEED.FAILED", f"Copying template {t.name} to {pool.name} failed: {exc.text}",
                      level="ERROR", resource_type="Template", resource_uuid=t.uuid)
        s.commit()
        raise
    ref.state, ref.download_state, ref.download_pct = "Ready", "DOWNLOADED", 100
    ref.size, ref.physical_size, ref.last_used = res.get("size"), res.get("physical_size"), utcnow()
    if res.get("validators"):
        ref.validators = res["validators"]
    if t.size is None:
        t.size, t.physical_size = res.get("size"), res.get("physical_size")
    s.commit()
    return ref


def _source_changed(s, ctx, t, pool, host, ref) -> bool:
    """Seed 002 serves a cached direct-download copy forever; volstack asks the source (HEAD) first."""
    known = {k: v for k, v in (ref.validators or {}).items() if k != "superseded"}
    if not known:
        return False
    args = templates.download_args(s, t)
    try:
        res = channel(host).call("template_check_source", validators=known, options=args["options"],
                                 **{k: args[k] for k in ("urls", "metalink") if k in args})
    except CloudError as exc:
        events.record(s, ctx, "TEMPLATE.DIRECT.DOWNLOAD", f"Cannot check the source of {t.name} ({exc.text}); "
                      f"using the copy cached on {pool.name}", level="WARN", resource_type="Template",
                      resource_uuid=t.uuid)
        return False
    if res.get("changed"):
        events.record(s, ctx, "TEMPLATE.DIRECT.DOWNLOAD", f"The source of template {t.name} changed "
                      f"({res.get('reason')}): refreshing the copy cached on {pool.name}", resource_type="Template",
                      resource_uuid=t.uuid)
    return bool(res.get("changed"))


def _refresh(s, ctx, t, pool, host, ref, progress) -> TemplatePoolRef:
    """Fetch the new bits. Volumes cloned from the old copy still need it: then the new copy gets a new name
    and the old one is remembered for the cleanup."""
    superseded = list((ref.validators or {}).get("superseded", []))
    if in_use(s, ref):
        superseded.append(ref.install_path)
        ref.install_path = f"{cache_name(t)}-{len(superseded)}"
    else:
        driver_for(pool.provider).delete_volume(channel(host), pool, Volume(uuid=ref.install_path, path=ref.install_path))
    ref.state, ref.download_state, ref.download_pct = "Creating", "DOWNLOAD_IN_PROGRESS", 0
    ref.validators = {"superseded": superseded}
    s.commit()
    ref = _copy(s, ctx, t, pool, host, ref, progress)
    ref.validators = {**(ref.validators or {}), "superseded": superseded}
    s.commit()
    return ref


def _direct_download(s, t, pool, host, ref, report) -> dict:
    """Seed 002: the host fetches the template straight into the pool; on failure other hosts of the
    cluster try, three attempts in all."""
    from volstack.services.pools import hosts_in_scope
    tried, last = [], None
    candidates = [host] + [h for h in hosts_in_scope(s, pool) if h.id != host.id and h.cluster_id == host.cluster_id]
    if pool.scope == "HOST":
        candidates = [host]
    for h in candidates[:3]:
        try:
            return run_long(channel(h), "template_download", report, pool=driver_for(pool.provider).spec(pool),
                            name=ref.install_path, **templates.download_args(s, t))
        except CloudError as exc:
            tried.append(h.name)
            last = exc
    raise ResourceUnavailable(f"Template {t.name} could not be downloaded on pool {pool.name}, failing after trying "
                              f"on {', '.join(tried)}: {last.text if last else 'no host'}")


def create_root(s, ctx, vol: Volume, pool: StoragePool, host: Host, progress=None) -> dict:
    """volumes.realize's hook for ROOT volumes of a template: seed, then clone (or copy when full clone is
    asked with the VM detail fullclone=true)."""
    t = s.get(Template, vol.template_id)
    ref = seed(s, ctx, t, pool, host, progress)
    if not vol.size and ref.size:          # a direct-download template's size is known once it is fetched
        vol.size = ref.size
    if ref.size and vol.size < ref.size:
        raise InvalidParameter(f"The root disk ({vol.size} bytes) cannot be smaller than template {t.name} "
                               f"({ref.size} bytes)")
    drv = driver_for(pool.provider)
    fmt = templates.FORMATS[t.format]
    enc = encryption.spec(s, vol)
    # an encrypted ROOT is a full encrypted copy: a linked clone would leave the template's clear data under it
    if enc or (vol.details or {}).get("fullclone") == "true" or not drv.CAPABILITIES.get("linked_clone"):
        cached = "raw" if drv.CAPABILITIES.get("image_formats") == "raw" else fmt    # how the copy landed
        res = run_long(channel(host), "volume_copy", progress, src_pool=drv.spec(pool), src_name=ref.install_path,
                       src_format=cached, dst_pool=drv.spec(pool), dst_name=vol.path, format="qcow2",
                       **({"encryption": enc} if enc else {}))
        vol.format = res.get("format", "qcow2").upper()
        if res["size"] < vol.size:
            res = drv.resize_volume(channel(host), pool, vol, vol.size, False, encryption=enc)
        return res
    return drv.clone_volume(channel(host), pool, vol, ref.install_path, fmt)


volumes.root_creators.append((lambda vol: vol.template_id is not None, create_root))


def _cached_copies(s, pool) -> dict:
    rows = s.execute(select(TemplatePoolRef.install_path, Template.uuid, Template.name)
                     .join(Template, Template.id == TemplatePoolRef.template_id)
                     .where(TemplatePoolRef.pool_id == pool.id))
    return {r.install_path: ("template", r.uuid, r.name) for r in rows}


pools.object_owners.append(_cached_copies)
pools.allocated_extras.append(lambda s, pool: aggregate.total(s, TemplatePoolRef.size, TemplatePoolRef.pool_id == pool.id))
counters.counted(TemplatePoolRef, ("pool_id", "size"), lambda s, r: [("pool", r["pool_id"], "allocated", r["size"])])


def prepare(s, ctx, t: Template, zone_id: int, pool: StoragePool | None = None, progress=None) -> list:
    """prepareTemplate: seed the template to one pool, or to every Up pool of the zone its hosts reach."""
    from volstack.services.pools import hosts_in_scope
    pools = [pool] if pool else list(s.scalars(select(StoragePool).where(StoragePool.zone_id == zone_id,
                                                                         StoragePool.state == "Up")))
    done = []
    for p in pools:
        hosts = hosts_in_scope(s, p)
        if not hosts:
            continue
        done.append(seed(s, ctx, t, p, hosts[0], progress))
    return done


def in_use(s, ref: TemplatePoolRef) -> int:
    """Volumes on the pool that may be linked clones of the copy (migrated-in copies are flat, but erring
    on the side of keeping the base costs only space), and VMs whose attached ISO is this copy."""
    clones = aggregate.count(s, Volume, Volume.template_id == ref.template_id, Volume.pool_id == ref.pool_id,
                             Volume.removed.is_(None), Volume.state != "Expunged")
    return clones + aggregate.count(s, VirtualMachine, VirtualMachine.iso_id == ref.template_id,
                                    VirtualMachine.iso_pool_id == ref.pool_id, VirtualMachine.removed.is_(None))


def cleanup(db, ctx) -> int:
    """storage.template.cleanup.enabled: remove cached copies no volume needs, once unused for a cleanup
    interval (so a copy seeded a moment ago for a clone in flight stays)."""
    removed = 0
    with db.session(readonly=True) as s:
        if not S.Settings.value_in(s, S.TEMPLATE_CLEANUP_ENABLED):
            return 0
        grace = timedelta(seconds=S.Settings.value_in(s, S.STORAGE_CLEANUP_INTERVAL))
        ids = [r.id for r in s.scalars(select(TemplatePoolRef).where(TemplatePoolRef.state.in_(("Ready", "Failed"))))
               if in_use(s, r) == 0 and (s.get(Template, r.template_id).removed is not None
                                         or r.last_used < utcnow() - grace)]
    for ref_id in ids:
        with db.session() as s:
            ref = s.get(TemplatePoolRef, ref_id)
            if ref is None or in_use(s, ref):
                continue
            pool = s.get(StoragePool, ref.pool_id)
            from volstack.services.pools import hosts_in_scope
            hosts = hosts_in_scope(s, pool)
            if not hosts:
                continue
            try:
                for name in [ref.install_path, *(ref.validators or {}).get("superseded", [])]:
                    driver_for(pool.provider).delete_volume(channel(hosts[0]), pool, Volume(uuid=name, path=name))
            except CloudError as exc:
                log.warning("removing cached template copy %s from %s: %s", ref.install_path, pool.name, exc.text)
                continue
            s.delete(ref)
            removed += 1
    return removed
