"""Image stores (secondary storage): add, list, update (read-only cordon), delete, browse, statistics.

A store is reached by the zone's host agents exactly like a file pool (NFS through QEMU's userspace
driver, or a directory every host of the zone sees): CloudStack runs a secondary-storage VM for this,
volstack asks one of its agents. Objects sit flat in the store root under their uuid and an extension.
"""
import logging

from sqlalchemy import func, select

from volstack import crypto, transfer_signing as signing
from volstack.db.image_models import ImageStore, TemplateStoreRef
from volstack.db.models import Host, utcnow
from volstack.drivers.default import DefaultPrimaryDriver
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, InvalidParameter, ResourceUnavailable
from volstack.services import configs, events, infra, lookup
from volstack.services.catalog import register_storage_provider
from volstack.services.context import require_root_admin
from volstack.services.listing import ListQuery, identity_filter, keyword_filter, paginate

log = logging.getLogger("volstack.imagestores")
lookup.register_entity("ImageStore", ImageStore)
configs.register_scope("imagestore", ImageStore)
# provider -> (url scheme, pool type the agent knows it by)
PROVIDERS = {"NFS": ("nfs", "NetworkFilesystem"), "Filesystem": ("file", "Filesystem")}
for _name in PROVIDERS:
    register_storage_provider("image", _name)

# Called with (session, store) -> list of (kind, uuid, name, install_path) the store holds; templates and
# snapshots register theirs, so deleting and browsing a store know what lives there.
object_sources: list = []


def get_store(s, uuid) -> ImageStore:
    store = s.scalar(select(ImageStore).where(ImageStore.uuid == uuid, ImageStore.removed.is_(None)))
    if store is None:
        raise InvalidParameter(f"Unable to find image store by id {uuid}")
    return store


def spec(store: ImageStore) -> dict:
    """How a host agent is told about the store: the same shape as a file pool."""
    pool_type = PROVIDERS[store.provider][1]
    out = {"uuid": store.uuid, "type": pool_type, "path": store.path}
    if pool_type == "NetworkFilesystem":
        out.update(host=store.host_address, export=store.path)
    return out


def hosts_for(s, zone_id) -> list[Host]:
    """Up hosts of the zone that can do store work: real KVM agents first (simulated hosts hold no bytes)."""
    hosts = list(s.scalars(select(Host).where(Host.zone_id == zone_id, Host.state == "Up",
                                              Host.resource_state.in_(("Enabled", "Disabled"))).order_by(Host.id)))
    return sorted(hosts, key=lambda h: h.hypervisor != "KVM")


def host_for(s, store: ImageStore) -> Host:
    hosts = hosts_for(s, store.zone_id)
    if not hosts:
        raise ResourceUnavailable(f"No host is Up in the zone of image store {store.name} to reach it; add or "
                                  "start a host agent")
    return hosts[0]


def delete_object(db, store_id: int, name: str, what: str) -> bool:
    """Delete object `name` from a store with no transaction open during the agent call (the caller has
    committed its claim on the row first). True when it is gone, or its store is; False, logged, to retry."""
    with db.session(readonly=True) as s:
        store = s.get(ImageStore, store_id)
        if store is None or store.removed is not None:
            return True
        label = store.name
        try:
            host, where = host_for(s, store), spec(store)
        except CloudError as exc:
            log.warning("%s: removing %s from image store %s: %s (will retry)", what, name, label, exc.text)
            return False
    try:
        channel(host).call("volume_delete", pool=where, name=name)
    except CloudError as exc:
        log.warning("%s: removing %s from image store %s: %s (will retry)", what, name, label, exc.text)
        return False
    return True


def serving_host(s, store: ImageStore, simulated: bool = False) -> Host:
    """The host agent that serves the store's objects over HTTP (extract URLs, browser uploads). simulated: a zone of
    Simulator hosts answers with one of them, as CloudStack's simulator hands out extract URLs nobody serves."""
    up = hosts_for(s, store.zone_id)
    hosts = [h for h in up if h.hypervisor == "KVM" and h.url and h.credential] or \
        ([h for h in up if h.hypervisor == "Simulator"] if simulated else [])
    if not hosts:
        raise ResourceUnavailable(f"No KVM host agent is Up in the zone of image store {store.name} to serve "
                                  "transfers; add or start one")
    return hosts[0]


def signed_download(host: Host, store: ImageStore, name: str, filename: str, seconds: float) -> tuple[str, str]:
    """(url, expires): a GET of store object `name` on host's agent, valid for `seconds`."""
    key = crypto.decrypt(host.credential) if host.credential else f"simulator-{host.uuid}"    # Simulator: no agent
    return signing.download_url(host.url, key, {"pool": spec(store), "name": name, "filename": filename}, filename,
                                seconds)


def signed_upload(host: Host, store: ImageStore, object_uuid: str, claims: dict, seconds: float) -> dict:
    """getuploadparams' postURL, metadata, expires and signature: a POST into store on host's agent."""
    return signing.upload_params(host.url, crypto.decrypt(host.credential), dict(claims, pool=spec(store)),
                                 object_uuid, seconds)


def add_store(s, ctx, *, name=None, provider=None, url, zoneid=None, details=None) -> ImageStore:
    require_root_admin(ctx)
    provider = next((p for p in PROVIDERS if p.lower() == (provider or "NFS").lower()), None)
    if provider is None:
        raise InvalidParameter(f"Unsupported image store provider: use {' or '.join(PROVIDERS)} "
                               "(S3, Swift and SMB stores are not supported by volstack)")
    if not zoneid:
        raise InvalidParameter("volstack image stores are zone-wide: pass zoneid")
    zone = infra.get_zone(s, zoneid)
    scheme, _ = PROVIDERS[provider]
    parsed = DefaultPrimaryDriver().parse_url(url)
    if not url.lower().startswith(scheme + "://"):
        raise InvalidParameter(f"A {provider} image store needs a {scheme}:// url, got {url}")
    if s.scalar(select(ImageStore.id).where(ImageStore.url == url, ImageStore.removed.is_(None))):
        raise InvalidParameter(f"An image store with url {url} already exists")
    store = ImageStore(name=name or url, provider=provider, protocol=scheme, url=url, zone_id=zone.id,
                       host_address=parsed["host_address"], path=parsed["path"], details=dict(details or {}))
    s.add(store)
    s.flush()
    hosts = hosts_for(s, zone.id)
    if hosts:     # with no host yet the store is checked when the first host joins (statistics task)
        try:
            stats = channel(hosts[0]).call("pool_connect", pool=spec(store))
        except CloudError as exc:
            raise InvalidParameter(f"Host {hosts[0].name} cannot use image store {url}: {exc.text}") from None
        _set_stats(store, stats)
    events.record(s, ctx, "IMAGE.STORE.ADD", f"Image store {store.name} added ({url})", resource_type="ImageStore",
                  resource_uuid=store.uuid)
    return store


def _set_stats(store, stats: dict) -> None:
    store.capacity_bytes = int(store.details.get("capacitybytes") or stats.get("capacity") or 0)
    store.used_bytes = int(stats.get("used") or 0)
    store.stats_updated = utcnow()


def list_stores(s, ctx, q: ListQuery, **f):
    require_root_admin(ctx)
    stmt = select(ImageStore).where(ImageStore.removed.is_(None)).order_by(ImageStore.id)
    stmt = stmt.where(*identity_filter(ImageStore, f))
    if f.get("protocol"):
        stmt = stmt.where(func.lower(ImageStore.protocol) == f["protocol"].lower())
    if f.get("provider"):
        stmt = stmt.where(func.lower(ImageStore.provider) == f["provider"].lower())
    if f.get("readonly") is not None:
        stmt = stmt.where(ImageStore.readonly.is_(bool(f["readonly"])))
    if f.get("zoneid"):
        stmt = stmt.where(ImageStore.zone_id == infra.get_zone(s, f["zoneid"]).id)
    return paginate(s, stmt.where(*keyword_filter(q, ImageStore.name)), q)


def update_store(s, ctx, store: ImageStore, *, name=None, readonly=None, capacitybytes=None) -> ImageStore:
    require_root_admin(ctx)
    if name:
        store.name = name
    if readonly is not None:
        store.readonly = bool(readonly)
    if capacitybytes is not None:
        if capacitybytes <= 0:
            raise InvalidParameter("capacitybytes must be a positive number of bytes")
        store.details = {**store.details, "capacitybytes": capacitybytes}
        store.capacity_bytes = capacitybytes
    events.record(s, ctx, "IMAGE.STORE.UPDATE", f"Image store {store.name} updated"
                  + (" (read-only)" if store.readonly else ""), resource_type="ImageStore", resource_uuid=store.uuid)
    return store


def objects_on(s, store) -> list[tuple]:
    return [o for source in object_sources for o in source(s, store)]


def delete_store(s, ctx, store: ImageStore) -> None:
    require_root_admin(ctx)
    held = objects_on(s, store)
    if held:
        kinds = sorted({k for k, *_ in held})
        raise InvalidParameter(f"Cannot delete image store {store.name}: it still holds {len(held)} "
                            f"{'/'.join(kinds)} copies; delete them or migrate them with "
                            "migrateSecondaryStorageData first")
    store.removed = utcnow()
    events.record(s, ctx, "IMAGE.STORE.DELETE", f"Image store {store.name} deleted", resource_type="ImageStore",
                  resource_uuid=store.uuid)


def list_objects(s, ctx, store: ImageStore, path: str | None) -> list[dict]:
    """Files under path in the store, each with the template/snapshot it belongs to."""
    require_root_admin(ctx)
    from volstack.services.pools import browse_path, datastore_object
    rel = browse_path(path)
    entries = channel(host_for(s, store)).call("pool_list", pool=spec(store), path=rel)["entries"]
    owners = {o[3]: o[:3] for o in objects_on(s, store)}
    return [datastore_object(e, owners.get(e["name"]) if not rel else None) for e in entries]


def writable_stores(s, zone_id) -> list[ImageStore]:
    """Stores new objects may land on, most free space first (read-only stores are cordoned)."""
    stores = list(s.scalars(select(ImageStore).where(ImageStore.zone_id == zone_id, ImageStore.removed.is_(None),
                                                     ImageStore.readonly.is_(False))))
    return sorted(stores, key=lambda st: -((st.capacity_bytes or 0) - (st.used_bytes or 0)))


def refresh_stats(db) -> None:
    with db.session(readonly=True) as s:
        work = [(st.id, spec(st), st.zone_id) for st in s.scalars(select(ImageStore).where(ImageStore.removed.is_(None)))]
        hosts = {z: hosts_for(s, z) for z in {w[2] for w in work}}
        chans = {z: channel(h[0]) for z, h in hosts.items() if h}
    for store_id, sp, zone_id in work:
        ch = chans.get(zone_id)
        if ch is None:
            continue
        try:
            stats = ch.call("pool_stats", pool=sp)
        except CloudError as exc:
            log.warning("image store %s statistics: %s", sp["uuid"], exc.text)
            continue
        with db.session() as s:
            store = s.get(ImageStore, store_id)
            if store is not None:
                _set_stats(store, stats)


def template_objects(s, store) -> list[tuple]:
    from volstack.db.image_models import Template
    rows = s.execute(select(Template.uuid, Template.name, TemplateStoreRef.install_path)
                     .join(Template, Template.id == TemplateStoreRef.template_id)
                     .where(TemplateStoreRef.store_id == store.id, TemplateStoreRef.state != "Destroyed"))
    return [("template", r.uuid, r.name, r.install_path) for r in rows]


object_sources.append(template_objects)
