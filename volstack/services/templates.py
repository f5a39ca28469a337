"""Templates and ISOs: registration, download to image stores, listing with templatefilter, updates,
permissions, deletion. Copies on primary pools (the cache ROOT volumes clone) are in template_cache.py.

A registered template gets one template_store_ref per zone on a writable image store; a background
task asks a host agent to download it there (checksum verified, image probed once). Direct-download
templates get no store copy at all: hosts fetch them straight to primary at deploy time; one registered
with a checksum is fetched and hashed once by a zone host in the background (verify_source) and is usable
only once that check passed.
"""
import ipaddress
import logging
import re
from urllib.parse import urlparse

from sqlalchemy import and_, exists, func, or_, select

from volstack.db import aggregate, counters
from volstack.db.image_models import (ImageStore, Template, TemplatePermission, TemplatePoolRef, TemplateStoreRef,
                                      TemplateZone)
from volstack.db.models import Account, Zone, utcnow
from volstack.db.storage_models import VirtualMachine
from volstack.drivers.hosts import channel, run_long
from volstack.errors import CloudError, InvalidParameter, PermissionDenied, ResourceUnavailable
from volstack.services import catalog, events, imagestores, infra, limits, lookup, settings as S
from volstack.services.context import check_access, owner_filter
from volstack.services.listing import ListQuery, identity_filter, keyword_filter, paginate

log = logging.getLogger("volstack.templates")
lookup.register_entity("Template", Template)
lookup.register_entity("Iso", Template)
FORMATS = {"QCOW2": "qcow2", "RAW": "raw", "ISO": "raw"}      # qemu's format of each (an ISO is raw bytes)
EXTENSIONS = {"QCOW2": "qcow2", "RAW": "raw", "ISO": "iso"}
DIGESTS = {"MD5": 32, "SHA-1": 40, "SHA-224": 56, "SHA-256": 64, "SHA-384": 96, "SHA-512": 128}
FILTERS = ("featured", "self", "selfexecutable", "sharedexecutable", "executable", "community", "all")
# Filters that only show templates ready to deploy (CloudStack's onlyReady rule).
READY_ONLY = ("featured", "selfexecutable", "sharedexecutable", "community")

def _store_ref_counts(s, r):
    if r["state"] not in ("Destroyed", "Failed") and r["template_id"] is not None:
        t = s.get(Template, r["template_id"])
        yield "account", t.account_id if t else None, "secondary_storage", r["physical_size"]


counters.counted(Template, ("account_id", "removed"),
                 lambda s, t: [("account", t["account_id"], "template", 1)] if t["removed"] is None else [])
counters.counted(TemplateStoreRef, ("template_id", "state", "physical_size"), _store_ref_counts)
limits.register_usage_counter("template", lambda s, acc: aggregate.count(
    s, Template, Template.account_id == acc, Template.removed.is_(None)))
# Secondary storage: the bytes of the account's templates on image stores (snapshots add theirs).
limits.register_usage_counter("secondary_storage", lambda s, acc: aggregate.total(
    s, TemplateStoreRef.physical_size, Template.id == TemplateStoreRef.template_id, Template.account_id == acc,
    TemplateStoreRef.state.notin_(("Destroyed", "Failed"))))


def parse_checksum(value: str | None) -> tuple[str, str] | None:
    """CloudStack's forms: {ALG}hex, or bare hex (MD5 by length 32; other lengths pick their SHA)."""
    if not value:
        return None
    m = re.fullmatch(r"(?:\{([A-Za-z0-9-]*)\})?([0-9a-fA-F]+)", value.strip())
    if not m:
        raise InvalidParameter(f"Invalid checksum {value!r}: use {{ALGORITHM}}hex (MD5, SHA-1, SHA-224, SHA-256, "
                               "SHA-384, SHA-512) or a bare MD5 hex digest")
    alg, digest = (m.group(1) or "").upper(), m.group(2).lower()
    if not alg:
        alg = next((a for a, n in DIGESTS.items() if n == len(digest)), "")
    alg = {"SHA1": "SHA-1", "SHA224": "SHA-224", "SHA256": "SHA-256", "SHA384": "SHA-384", "SHA512": "SHA-512"}.get(alg, alg)
    if alg not in DIGESTS:
        raise InvalidParameter(f"Invalid checksum {value!r}: unknown algorithm {alg or '(none)'}")
    if len(digest) != DIGESTS[alg]:
        raise InvalidParameter(f"Invalid checksum {value!r}: a {alg} digest has {DIGESTS[alg]} hex digits, "
                               f"not {len(digest)}")
    return alg, digest


def check_url(url: str) -> str:
    """http(s) only; never file:// or link-local addresses (the cloud's metadata service lives there)."""
    p = urlparse((url or "").strip())
    if p.scheme.lower() not in ("http", "https"):
        raise InvalidParameter(f"Unsupported URL {url!r}: templates and ISOs are downloaded over http:// or "
                               "https:// (a .metalink URL lists mirrors)")
    if not p.hostname:
        raise InvalidParameter(f"The URL {url!r} has no host")
    try:
        addr = ipaddress.ip_address(p.hostname)
    except ValueError:
        addr = None
    if addr is not None and (addr.is_link_local or addr.is_multicast or addr.is_unspecified):
        raise InvalidParameter(f"The URL {url!r} points at a link-local or reserved address; use a real web server")
    return url.strip()


def get_template(s, ctx, uuid, is_iso=None) -> Template:
    t = s.scalar(select(Template).where(Template.uuid == uuid, Template.removed.is_(None)))
    if t is None or (is_iso is not None and (t.format == "ISO") != is_iso):
        raise InvalidParameter(f"Unable to find {'ISO' if is_iso else 'template'} by id {uuid}")
    if not can_use(s, ctx, t):
        raise PermissionDenied(f"Account {ctx.account_name} does not have permission to use template {t.name}")
    return t


def usable_by(s, t: Template, account_id: int) -> bool:
    """Public, owned by the account, or shared with it (updateTemplatePermissions)."""
    return t.is_public or t.account_id == account_id or s.scalar(
        select(TemplatePermission.id).where(TemplatePermission.template_id == t.id,
                                            TemplatePermission.account_id == account_id)) is not None


def can_use(s, ctx, t: Template) -> bool:
    if ctx.is_root_admin or usable_by(s, t, ctx.account_id):
        return True
    try:
        check_access(s, ctx, t.account_id, "template")
        return True
    except CloudError:
        return False


ALL_ZONES = "-1"


class InZone:
    """A template as listed in one of its zones: listTemplates shows one row per template and zone, each with that
    zone's id, name and readiness (a cross-zone template is one row per zone, all with the template's id)."""
    __slots__ = ("template", "listed_zone_id")

    def __init__(self, template, zone_id):
        self.template, self.listed_zone_id = template, zone_id

    def __getattr__(self, name):
        return getattr(self.template, name)


def _zones(s, zoneid=None, zoneids=None, directdownload=False) -> list[Zone]:
    """The zones of a registration. -1 (zoneid or in zoneids): cross-zone, every zone that can hold it (one with a
    writable image store, or any zone for a direct download)."""
    ids = list(zoneids or []) + ([zoneid] if zoneid else [])
    if not ids:
        raise InvalidParameter("Pass zoneid (or zoneids; -1 means all zones)")
    if ALL_ZONES in ids:
        zones = list(s.scalars(select(Zone).order_by(Zone.id)))
        if not directdownload:
            zones = [z for z in zones if imagestores.writable_stores(s, z.id)]
        if not zones:
            raise ResourceUnavailable("No zone has a writable image store for a cross-zone template: add one with "
                                      "addImageStore")
        return zones
    return [infra.get_zone(s, z) for z in dict.fromkeys(ids)]


def register(s, ctx, *, name, url, format, zoneid=None, zoneids=None, displaytext=None, hypervisor="KVM",
             ostypeid=None, checksum=None, ispublic=False, isfeatured=False, isextractable=False,
             passwordenabled=False, requireshvm=True, directdownload=False, bootable=True, templatetype=None,
             details=None, is_iso=False, upload=False, imagestoreuuid=None) -> tuple[Template, list[TemplateStoreRef]]:
    """The template row, its zones and (unless direct download) one store copy per zone, Allocated: the
    caller queues a download task per copy, or (upload: no URL) hands out browser upload parameters.
    imagestoreuuid (registerIso): the store of its zone that gets the copy, instead of the one with most room."""
    url = None if upload else check_url(url)
    if upload and directdownload:
        raise InvalidParameter("A template uploaded from a browser lands on an image store: directdownload is "
                               "not possible")
    fmt = "ISO" if is_iso else (format or "").upper()
    if fmt not in FORMATS or (fmt == "ISO") != is_iso:
        raise InvalidParameter(f"Invalid format {format}: KVM templates are QCOW2 or RAW; ISOs are registered "
                               "with registerIso")
    hv = "KVM" if is_iso else infra.hypervisor_name(hypervisor or "KVM")
    if directdownload and hv != "KVM":
        raise InvalidParameter("Direct download is only supported for KVM templates")
    parse_checksum(checksum)
    if ostypeid is None:
        ostypeid = catalog.os_type_id("Other (64-bit)" if is_iso else "Other Linux (64-bit)")
    elif catalog.os_type(ostypeid, s) is None:
        raise InvalidParameter(f"Unable to find OS type by id {ostypeid}: see listOsTypes")
    if ispublic and not ctx.is_admin and not _users_may_publish(s, ctx):
        raise PermissionDenied("Only administrators may register public templates here "
                               "(allow.public.user.templates is false)")
    # isfeatured is declared root-only on the commands; the type is checked by value, as CloudStack: USER for all
    if templatetype and templatetype.upper() != "USER" and not ctx.is_root_admin:
        raise PermissionDenied(f"Only the root administrator may register {templatetype.upper()} templates; "
                               "templatetype=USER (the default) is yours")
    zones = _zones(s, zoneid, zoneids, directdownload)
    cross_zones = ALL_ZONES in (list(zoneids or []) + [zoneid])
    limits.check_limit(s, ctx.account_id, "template")
    if not directdownload:
        missing = [z.name for z in zones if not imagestores.writable_stores(s, z.id)]
        if missing:
            raise ResourceUnavailable(f"No writable image store in zone {', '.join(missing)}: add one with "
                                      "addImageStore or clear readonly on an existing one")
    chosen = imagestores.get_store(s, imagestoreuuid) if imagestoreuuid else None
    if chosen is not None and (directdownload or chosen.readonly or chosen.zone_id not in {z.id for z in zones}):
        raise InvalidParameter(f"imagestoreuuid: image store {chosen.name} is not a writable store of the zones "
                               "registered to" + (" (a direct-download image lands on no store)" if directdownload
                                                  else ""))
    t = Template(name=name, display_text=displaytext or name, format=fmt, hypervisor=hv, os_type=ostypeid, url=url,
                 checksum=checksum, is_public=bool(ispublic), featured=bool(isfeatured),
                 cross_zones=cross_zones, bootable=bool(bootable), extractable=bool(isextractable),
                 password_enabled=bool(passwordenabled), requires_hvm=bool(requireshvm),
                 direct_download=bool(directdownload), template_type=(templatetype or "USER").upper(),
                 account_id=ctx.account_id, domain_id=ctx.domain_id, details=dict(details or {}))
    if directdownload:
        for z in zones:
            _check_source_from(s, t, z)
        if checksum:          # the caller queues verify_source: the bytes are checked in the background
            t.verify_state, t.verify_pct = "Checking", 0
    s.add(t)
    s.flush()
    refs = []
    for z in zones:
        s.add(TemplateZone(template_id=t.id, zone_id=z.id))
        if not directdownload:
            store = chosen if chosen is not None and chosen.zone_id == z.id else imagestores.writable_stores(s, z.id)[0]
            ref = TemplateStoreRef(template_id=t.id, store_id=store.id, install_path=object_name(t))
            s.add(ref)
            refs.append(ref)
    s.flush()
    events.record(s, ctx, "ISO.CREATE" if is_iso else "TEMPLATE.CREATE", f"{'ISO' if is_iso else 'Template'} "
                  f"{name} registered " + (f"from {url}" if url else "for a browser upload"), resource_type="Template",
                  resource_uuid=t.uuid)
    return t, refs


def _check_source_from(s, t: Template, zone) -> None:
    """Direct download: a host of the zone must reach the source now (CloudStack asks a KVM host for the size)."""
    hosts = [h for h in imagestores.hosts_for(s, zone.id) if h.hypervisor == "KVM"]
    if not hosts:
        raise ResourceUnavailable(f"No KVM host is Up in zone {zone.name} to check the direct-download URL")
    args = download_args(s, t)
    args["options"]["timeout"] = 15
    try:
        channel(hosts[0]).call("template_check_source", options=args["options"],
                               **{k: args[k] for k in ("urls", "metalink") if k in args})
    except CloudError as exc:
        raise InvalidParameter(f"Host {hosts[0].name} cannot use {t.url} for a direct-download template: "
                               f"{exc.text}") from None


def verify_source(s, ctx, template_id: int, progress=None) -> dict:
    """The registration check of a direct-download template with a checksum: a zone host fetches the source
    and hashes it without storing it (agent template_verify, the deploy-time download's rules: mirrors in
    order, three attempts). The template is Verified or Failed with the reason, committed either way."""
    t = s.get(Template, template_id)
    if t is None or t.removed is not None or t.verify_state != "Checking":
        return {}
    zone_ids = list(s.scalars(select(TemplateZone.zone_id).where(TemplateZone.template_id == t.id)
                              .order_by(TemplateZone.id)))
    hosts = [h for z in zone_ids for h in imagestores.hosts_for(s, z) if h.hypervisor == "KVM"]
    args = download_args(s, t)

    def report(pct):
        t.verify_pct = min(int(pct), 99)
        if progress:
            progress(int(pct))      # commits
        else:
            s.commit()
    try:
        if not hosts:
            raise ResourceUnavailable("no KVM host is Up in its zones to fetch the source")
        res = run_long(channel(hosts[0]), "template_verify", report, checksum=t.checksum, options=args["options"],
                       **{k: args[k] for k in ("urls", "metalink") if k in args})
    except CloudError as exc:
        t.verify_state, t.verify_error = "Failed", f"checksum check of {t.url} failed: {exc.text}"
        events.record(s, ctx, "TEMPLATE.DIRECT.DOWNLOAD", f"{t.name}: {t.verify_error}", level="ERROR",
                      resource_type="Template", resource_uuid=t.uuid)
        s.commit()
        return {"error": t.verify_error}
    t.verify_state, t.verify_pct, t.verify_error = "Verified", 100, None
    events.record(s, ctx, "TEMPLATE.DIRECT.DOWNLOAD", f"The source of {t.name} matches its checksum "
                  f"{res.get('checksum')} (read from {', '.join(res.get('mirrors') or [])} on host {hosts[0].name})",
                  resource_type="Template", resource_uuid=t.uuid)
    s.commit()
    return {"checksum": res.get("checksum")}


def _users_may_publish(s, ctx) -> bool:
    return bool(S.Settings.value_in(s, S.ALLOW_PUBLIC_USER_TEMPLATES, account=ctx.account_id))


def object_name(t: Template) -> str:
    return f"{t.uuid}.{EXTENSIONS[t.format]}"


def download_options(s) -> dict:
    """What hosts may fetch from: public addresses, the private ranges, and the internal sites an operator
    allowed (secstorage.allowed.internal.sites, e.g. a mirror on the management network or 127.0.0.1/32)."""
    from volstack.agent.fetch import PRIVATE
    extra = [c.strip() for c in (S.Settings.value_in(s, S.ALLOWED_INTERNAL_SITES) or "").split(",") if c.strip()]
    for cidr in extra:
        try:
            net = ipaddress.ip_network(cidr, strict=False)
        except ValueError:
            raise InvalidParameter(f"secstorage.allowed.internal.sites has an invalid CIDR {cidr!r}") from None
        if net.prefixlen == 0:
            raise InvalidParameter("secstorage.allowed.internal.sites: 0.0.0.0/0 is not a valid site")
    return {"allowed_cidrs": list(PRIVATE) + extra} if extra else {}


def size_limit(s, key: S.ConfigKey) -> dict:
    """The download options that stop a download (or what it unpacks to) the moment it passes the setting."""
    gb = S.Settings.value_in(s, key)
    return {"max_size": gb * 1024 ** 3, "limit_setting": f"{key.name} = {gb} GB"}


def download_args(s, t: Template) -> dict:
    """The agent's template_download arguments for t's source (a .metalink URL lists mirrors)."""
    args = {"format": t.format, "checksum": t.checksum,
            "options": {**download_options(s), **size_limit(s, S.MAX_TEMPLATE_SIZE)}}
    if urlparse(t.url).path.endswith((".metalink", ".meta4")):
        args["metalink"] = t.url
    else:
        args["urls"] = [t.url]
    headers = {k.split(":", 1)[1]: v for k, v in (t.details or {}).items() if k.upper().startswith("HTTP_HEADER:")}
    if headers:
        args["options"]["headers"] = headers
    return args


def download_to_store(s, ctx, ref_id: int, progress=None) -> dict:
    """The download task: a host agent fetches the template into the store; the copy ends Ready or Failed
    with the reason, committed either way."""
    ref = s.get(TemplateStoreRef, ref_id)
    if ref is None or ref.state in ("Ready", "Destroyed"):
        return {}
    t, store = s.get(Template, ref.template_id), s.get(ImageStore, ref.store_id)
    ref.state, ref.download_state, ref.download_pct, ref.error, ref.updated = \
        "Creating", "DOWNLOAD_IN_PROGRESS", 0, None, utcnow()
    s.commit()

    def report(pct):
        ref.download_pct, ref.updated = min(int(pct), 100), utcnow()
        if progress:
            progress(int(pct))      # commits
        else:
            s.commit()
    try:
        host = imagestores.host_for(s, store)
        res = run_long(channel(host), "template_download", report, pool=imagestores.spec(store),
                       name=ref.install_path, **download_args(s, t))
    except CloudError as exc:
        ref.state, ref.download_state, ref.error, ref.updated = "Failed", "DOWNLOAD_ERROR", exc.text, utcnow()
        events.record(s, ctx, "TEMPLATE.DOWNLOAD.FAILED", f"Download of {t.name} to {store.name} failed: {exc.text}",
                      resource_type="Template", resource_uuid=t.uuid)
        s.commit()
        return {"error": exc.text}
    ref.state, ref.download_state, ref.download_pct, ref.updated = "Ready", "DOWNLOADED", 100, utcnow()
    ref.size, ref.physical_size = res.get("size"), res.get("physical_size")
    t.size, t.physical_size = res.get("size"), res.get("physical_size")
    events.record(s, ctx, "TEMPLATE.DOWNLOAD.SUCCESS", f"Template {t.name} downloaded to image store {store.name}",
                  resource_type="Template", resource_uuid=t.uuid)
    s.commit()
    return {"size": t.size}


def zone_ids(s, t: Template) -> list[int]:
    return list(s.scalars(select(TemplateZone.zone_id).where(TemplateZone.template_id == t.id).order_by(TemplateZone.id)))


def ready_in_zone(s, t: Template, zone_id: int) -> TemplateStoreRef | None:
    return s.scalar(select(TemplateStoreRef).join(ImageStore, ImageStore.id == TemplateStoreRef.store_id)
                    .where(TemplateStoreRef.template_id == t.id, TemplateStoreRef.state == "Ready",
                           ImageStore.zone_id == zone_id, ImageStore.removed.is_(None)).order_by(TemplateStoreRef.id))


def is_ready(s, t: Template, zone_id: int | None = None, store_refs=None) -> bool:
    """store_refs: the template's [(TemplateStoreRef, ImageStore)] when the caller has them (a listed page)."""
    if t.direct_download:
        return t.verify_state in (None, "Verified")
    if store_refs is not None:
        return any(ref.state == "Ready" and st.removed is None and zone_id in (None, st.zone_id) for ref, st in store_refs)
    stmt = select(TemplateStoreRef.id).join(ImageStore, ImageStore.id == TemplateStoreRef.store_id).where(
        TemplateStoreRef.template_id == t.id, TemplateStoreRef.state == "Ready", ImageStore.removed.is_(None))
    if zone_id is not None:
        stmt = stmt.where(ImageStore.zone_id == zone_id)
    return s.scalar(stmt.limit(1)) is not None


def check_ready(s, t: Template, zone) -> None:
    """Refuse, with the reason, a template or ISO that cannot be used in zone yet (deploys, attachIso)."""
    kind = "ISO" if t.format == "ISO" else "Template"
    if t.direct_download and t.verify_state == "Failed":
        raise InvalidParameter(f"{kind} {t.name} cannot be used: its {t.verify_error}. Register it again with the "
                               "right checksum or URL")
    if t.direct_download and t.verify_state == "Checking":
        raise InvalidParameter(f"{kind} {t.name} is still being checked against its checksum ({t.verify_pct}% "
                               "read); use it once listTemplates shows it ready")
    if not is_ready(s, t, zone.id):
        raise InvalidParameter(f"{kind} {t.name} is not ready in zone {zone.name} yet (see its status in listTemplates)")


def list_templates(s, ctx, q: ListQuery, *, is_iso: bool, templatefilter="executable", **f):
    flt = (templatefilter or "executable").lower()
    if flt not in FILTERS:
        raise InvalidParameter(f"Invalid templatefilter {templatefilter}: use one of {', '.join(FILTERS)}")
    stmt = (select(Template, TemplateZone.zone_id)
            .outerjoin(TemplateZone, TemplateZone.template_id == Template.id)
            .where(Template.removed.is_(None), (Template.format == "ISO") if is_iso else (Template.format != "ISO"))
            .order_by(Template.id, TemplateZone.zone_id))
    shared = exists().where(TemplatePermission.template_id == Template.id,
                            TemplatePermission.account_id == ctx.account_id)
    mine = Template.account_id == ctx.account_id
    if flt == "featured":
        stmt = stmt.where(Template.featured.is_(True), Template.is_public.is_(True))
    elif flt in ("self", "selfexecutable"):
        stmt = stmt.where(mine) if not ctx.is_admin or not q.listall else stmt.where(
            *owner_filter(s, ctx, Template, listall=True, isrecursive=q.isrecursive, account=q.account,
                          domain_uuid=q.domainid))
    elif flt == "sharedexecutable":
        stmt = stmt.where(shared)
    elif flt == "community":
        stmt = stmt.where(Template.is_public.is_(True), Template.featured.is_(False))
    elif flt == "executable":
        stmt = stmt.where(or_(mine, Template.is_public.is_(True), shared))
    elif flt == "all":
        if not ctx.is_admin:
            raise PermissionDenied("templatefilter=all is for administrators; use executable")
        if not ctx.is_root_admin:
            stmt = stmt.where(or_(Template.is_public.is_(True), *owner_filter(s, ctx, Template, listall=True,
                                                                              isrecursive=True)))
    stmt = stmt.where(*identity_filter(Template, f))
    if f.get("hypervisor"):
        stmt = stmt.where(func.lower(Template.hypervisor) == f["hypervisor"].lower())
    if f.get("templatetype"):
        stmt = stmt.where(Template.template_type == f["templatetype"].upper())
    if f.get("bootable") is not None:                   # listIsos bootable=: true and false both filter
        stmt = stmt.where(Template.bootable.is_(bool(f["bootable"])))
    if f.get("zoneid"):
        stmt = stmt.where(TemplateZone.zone_id == infra.get_zone(s, f["zoneid"]).id)
    if f.get("imagestoreid"):
        store = imagestores.get_store(s, f["imagestoreid"])
        stmt = stmt.where(exists().where(TemplateStoreRef.template_id == Template.id,
                                         TemplateStoreRef.store_id == store.id))
    if f.get("storageid"):
        from volstack.services.pools import get_pool
        pool = get_pool(s, f["storageid"])
        stmt = stmt.where(exists().where(TemplatePoolRef.template_id == Template.id, TemplatePoolRef.pool_id == pool.id))
    ready = exists().where(TemplateStoreRef.template_id == Template.id, TemplateStoreRef.state == "Ready",
                           TemplateStoreRef.store_id.in_(select(ImageStore.id).where(
                               ImageStore.zone_id == TemplateZone.zone_id)))      # ready in the row's zone
    ready = or_(and_(Template.direct_download.is_(True),
                     or_(Template.verify_state.is_(None), Template.verify_state == "Verified")), ready)
    # isready=false filters nothing (as in CloudStack: cs_iso always sends is_ready, default false)
    if flt in READY_ONLY or (flt == "executable" and not ctx.is_admin) or f.get("isready"):
        stmt = stmt.where(ready)
    rows, total = paginate(s, stmt.where(*keyword_filter(q, Template.name)), q, scalars=False)
    return [InZone(t, zone_id) for t, zone_id in rows], total


def update(s, ctx, t: Template, *, name=None, displaytext=None, format=None, ostypeid=None, passwordenabled=None,
           bootable=None, requireshvm=None, isextractable=None, templatetype=None, details=None,
           cleanupdetails=False) -> Template:
    _owner_or_admin(s, ctx, t)
    if name:
        t.name = name
    if displaytext:
        t.display_text = displaytext
    if format:
        fmt = format.upper()
        if fmt not in FORMATS or (fmt == "ISO") != (t.format == "ISO"):
            raise InvalidParameter(f"Invalid format {format} for {'an ISO' if t.format == 'ISO' else 'a template'}")
        if fmt != t.format and is_ready(s, t):
            raise InvalidParameter(f"The format of {t.name} is {t.format} (probed at download); it cannot be changed")
        t.format = fmt
    if ostypeid:
        if catalog.os_type(ostypeid, s) is None:
            raise InvalidParameter(f"Unable to find OS type by id {ostypeid}: see listOsTypes")
        t.os_type = ostypeid
    for attr, value in (("password_enabled", passwordenabled), ("bootable", bootable), ("requires_hvm", requireshvm),
                        ("extractable", isextractable)):
        if value is not None:
            setattr(t, attr, bool(value))
    if templatetype:                    # root-only: declared on updateTemplate's parameter
        t.template_type = templatetype.upper()
    if cleanupdetails:
        t.details = {}
    elif details:
        t.details = {**(t.details or {}), **details}
    events.record(s, ctx, "TEMPLATE.UPDATE", f"Template {t.name} updated", resource_type="Template", resource_uuid=t.uuid)
    return t


def _owner_or_admin(s, ctx, t: Template) -> None:
    if t.template_type == "SYSTEM" and not ctx.is_root_admin:
        raise PermissionDenied(f"Template {t.name} is a system template")
    check_access(s, ctx, t.account_id, "template")


def update_permissions(s, ctx, t: Template, *, accounts_=None, op=None, ispublic=None, isfeatured=None,
                       isextractable=None) -> None:
    _owner_or_admin(s, ctx, t)
    if ispublic is not None:
        if ispublic and not ctx.is_admin and not _users_may_publish(s, ctx):
            raise PermissionDenied("Only administrators may make templates public here")
        t.is_public = bool(ispublic)
    if isfeatured is not None:          # root-only: declared on the command's parameter
        t.featured = bool(isfeatured)
    if isextractable is not None:
        t.extractable = bool(isextractable)
    if accounts_:
        if (op or "").lower() not in ("add", "remove", "reset"):
            raise InvalidParameter("op must be add, remove or reset when accounts are given")
        owner = s.get(Account, t.account_id)
        ids = []
        for name in accounts_:
            acc = s.scalar(select(Account).where(Account.name == name, Account.domain_id == owner.domain_id,
                                                 Account.removed.is_(None)))
            if acc is None:
                raise InvalidParameter(f"Unable to find account {name} in the template owner's domain")
            ids.append(acc.id)
        existing = {p.account_id: p for p in s.scalars(select(TemplatePermission)
                                                       .where(TemplatePermission.template_id == t.id))}
        if op.lower() == "reset":
            for p in existing.values():
                s.delete(p)
        elif op.lower() == "add":
            for i in ids:
                if i not in existing:
                    s.add(TemplatePermission(template_id=t.id, account_id=i))
        else:
            for i in ids:
                if i in existing:
                    s.delete(existing[i])
    elif (op or "").lower() == "reset":
        for p in s.scalars(select(TemplatePermission).where(TemplatePermission.template_id == t.id)):
            s.delete(p)
    events.record(s, ctx, "TEMPLATE.UPDATE", f"Permissions of template {t.name} updated", resource_type="Template",
                  resource_uuid=t.uuid)


def permitted_accounts(s, t: Template) -> list[str]:
    return list(s.scalars(select(Account.name).join(TemplatePermission, TemplatePermission.account_id == Account.id)
                          .where(TemplatePermission.template_id == t.id).order_by(Account.name)))


def delete(s, ctx, t: Template, *, forced=False, zoneid=None) -> list[int]:
    """Mark the template (or its copies in one zone) removed; returns store copies whose files the caller's
    cleanup task deletes. Cached copies on primary go with the storage cleanup once no volume needs them."""
    _owner_or_admin(s, ctx, t)
    if t.format == "ISO":          # as CloudStack: refused while attached; VMs installed from it do not need it
        from volstack.services import isos
        names = isos.holders(s, t)
        if names:
            raise InvalidParameter(f"ISO {t.name} is attached to virtual machine(s) {', '.join(names)}; detach it "
                                   "(detachIso) before deleting it")
        users = 0
    else:
        users = aggregate.count(s, VirtualMachine, VirtualMachine.template_id == t.id, VirtualMachine.removed.is_(None))
    if users and not forced:
        raise InvalidParameter(f"Template {t.name} is used by {users} virtual machine(s); pass forced=true to delete it "
                            "anyway (their volumes keep working)")
    zone = infra.get_zone(s, zoneid) if zoneid else None
    refs = list(s.scalars(select(TemplateStoreRef).join(ImageStore, ImageStore.id == TemplateStoreRef.store_id)
                          .where(TemplateStoreRef.template_id == t.id, TemplateStoreRef.state != "Destroyed",
                                 *( [ImageStore.zone_id == zone.id] if zone else []))))
    for ref in refs:
        ref.state, ref.updated = "Destroying", utcnow()
    if zone is not None:
        s.execute(TemplateZone.__table__.delete().where(TemplateZone.template_id == t.id, TemplateZone.zone_id == zone.id))
    remaining = aggregate.count(s, TemplateZone, TemplateZone.template_id == t.id)
    if zone is None or not remaining:
        t.removed, t.state = utcnow(), "Inactive"
    events.record(s, ctx, "ISO.DELETE" if t.format == "ISO" else "TEMPLATE.DELETE",
                  f"{'ISO' if t.format == 'ISO' else 'Template'} {t.name} deleted"
                  + (f" from zone {zone.name}" if zone else ""), resource_type="Template", resource_uuid=t.uuid)
    return [r.id for r in refs]


def delete_store_copy(s, ref_id: int) -> bool:
    """Remove a Destroying copy's file from its store and mark it Destroyed. When the store cannot be reached
    the copy stays Destroying and the storage cleanup task tries again."""
    ref = s.get(TemplateStoreRef, ref_id)
    if ref is None or ref.state != "Destroying":
        return False
    store = s.get(ImageStore, ref.store_id)
    if store is not None and store.removed is None and ref.install_path:
        try:
            channel(imagestores.host_for(s, store)).call("volume_delete", pool=imagestores.spec(store),
                                                         name=ref.install_path)
        except CloudError as exc:
            log.warning("removing %s from image store %s: %s (will retry)", ref.install_path, store.name, exc.text)
            return False
    ref.state, ref.updated = "Destroyed", utcnow()
    return True


def cleanup_store_copies(db) -> int:
    """Part of the storage cleanup task: store copies whose removal could not finish earlier."""
    with db.session(readonly=True) as s:
        ids = list(s.scalars(select(TemplateStoreRef.id).where(TemplateStoreRef.state == "Destroying")))
    done = 0
    for ref_id in ids:
        with db.session() as s:
            done += delete_store_copy(s, ref_id)
    return done
