"""RBD (Ceph) primary storage: the control-plane side of `rbd://user:secret@mon1[,mon2…][:port]/pool`.

The hosts do the work through their agent (volstack/agent/rbd.py, librbd). The cephx secret is taken out
of the URL at once: the pool row keeps a secret-less URL (`rbd://user@monitors/pool`) and the secret
encrypted in its `secret` column; it is decrypted only to build the spec sent to an agent, and never
appears in a response, an event or a log line (parse errors do not echo the URL).

CloudStack lists these pools under provider DefaultPrimary; here the row's provider is "RBD" so the
driver is found by name like any other, and listStoragePools shows `shown_provider`.
"""
import re
import time
from datetime import datetime, timezone
from urllib.parse import unquote

from volstack import crypto
from volstack.agent.rbd import cephx_key_valid
from volstack.drivers.default import DefaultPrimaryDriver
from volstack.errors import InvalidParameter

MAX_MONITORS = 5              # as CloudStack's UI and API accept
HEARTBEAT_SECONDS = 10        # how often each agent writes its heartbeat into the pool (pool detail heartbeatinterval)
DEAD_AFTER_BEATS = 3          # a host whose last beat is older than 3 intervals is shown Dead
CLONE_MAX_DEPTH = 5           # clone chains deeper than this are flattened (pool detail clonemaxdepth)
_HOST = re.compile(r"^(\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9.-]+)(?::(\d{1,5}))?$")
_USER = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")
_POOL = re.compile(r"^[A-Za-z0-9_.-]{1,255}$")
USAGE = "use rbd://<user>:<secret>@<monitor>[,<monitor>…][:<port>]/<ceph pool>"


def _secret(raw: str) -> str:
    """The cephx secret from the URL: percent-decoded, and the UI's URL-safe alphabet (- for +, _ for /)
    mapped back. Errors never quote it."""
    secret = unquote(raw).replace("-", "+").replace("_", "/")
    if not cephx_key_valid(secret):
        raise InvalidParameter("The secret in the rbd:// URL is not a cephx key (the base64 string after "
                               "'key =' in `ceph auth get client.<user>`); percent-encode '/' and '+' or use "
                               "the URL-safe form with '_' and '-'")
    return secret


def parse_monitors(hosts: str) -> tuple[list[tuple[str, int | None]], int | None]:
    """[(host, port)], and the port written once at the end (mon1,mon2:6789) that applies to all."""
    items = [h.strip() for h in hosts.split(",")]
    if not hosts or any(not h for h in items):
        raise InvalidParameter(f"The rbd:// URL names no monitor: {USAGE}")
    if len(items) > MAX_MONITORS:
        raise InvalidParameter(f"The rbd:// URL names {len(items)} monitors; at most {MAX_MONITORS} are accepted")
    mons = []
    for h in items:
        m = _HOST.match(h)
        if not m or (m.group(2) and not 0 < int(m.group(2)) < 65536):
            raise InvalidParameter(f"Invalid Ceph monitor {h!r} in the rbd:// URL: use host or host:port")
        mons.append((m.group(1), int(m.group(2)) if m.group(2) else None))
    ports = [p for _, p in mons]
    shared = ports[-1] if ports[-1] is not None and all(p is None for p in ports[:-1]) else None
    if shared is not None:
        mons = [(h, shared) for h, _ in mons]
    return mons, shared


class RbdPrimaryDriver(DefaultPrimaryDriver):
    name = "RBD"
    shown_provider = "DefaultPrimary"
    # encryption: QEMU's luks driver over the rbd protocol driver (a LUKS header + payload in the raw image)
    CAPABILITIES = {"linked_clone": True, "hypervisor_qos": True, "live_migrate": True, "native_snapshot": True,
                    "revert": True, "storage_qos": False, "incremental_backup": True, "heartbeat": True,
                    "encryption": True,
                    "image_formats": "raw", "hypervisors": "KVM", "scopes": "ZONE,CLUSTER"}

    def parse_url(self, url: str) -> dict:
        text = url.strip()
        if not text.lower().startswith("rbd://"):
            raise InvalidParameter(f"An RBD pool URL starts with rbd://: {USAGE}")
        rest = text[len("rbd://"):]
        at = rest.rfind("@")          # base64 has no '@'; a raw '/' in the secret must not split the URL
        if at < 0:
            raise InvalidParameter(f"The rbd:// URL has no user and secret: {USAGE}")
        userinfo, location = rest[:at], rest[at + 1:]
        user, colon, raw_secret = userinfo.partition(":")
        user = unquote(user)
        if not _USER.match(user) or not colon or not raw_secret:
            raise InvalidParameter(f"The rbd:// URL needs the cephx user and its secret: {USAGE}")
        secret = _secret(raw_secret)
        hosts, _, pool = location.partition("/")
        pool = unquote(pool).strip("/")
        if not _POOL.match(pool):
            raise InvalidParameter(f"The rbd:// URL names no valid Ceph pool after the monitors: {USAGE}")
        mons, port = parse_monitors(hosts)
        if port is not None or all(p is None for _, p in mons):
            address = ",".join(h for h, _ in mons)
        else:
            address = ",".join(f"{h}:{p}" if p else h for h, p in mons)
        return {"pool_type": "RBD", "host_address": address, "path": pool, "port": port or 0,
                "url": f"rbd://{user}@{hosts}/{pool}", "secret": crypto.encrypt(secret)}

    def monitors(self, pool) -> list[str]:
        out = []
        for h in pool.host_address.split(","):
            out.append(h if (":" in h and not h.endswith("]")) or not pool.port else f"{h}:{pool.port}")
        return out

    def user(self, pool) -> str:
        return pool.url[len("rbd://"):].split("@", 1)[0]

    def spec(self, pool) -> dict:
        details = pool.details or {}
        return {"uuid": pool.uuid, "type": "RBD", "path": pool.path, "monitors": self.monitors(pool),
                "user": self.user(pool), "key": crypto.decrypt(pool.secret),
                "heartbeat_seconds": int(details.get("heartbeatinterval") or HEARTBEAT_SECONDS)}

    def is_shared(self, pool) -> bool:
        return True

    def overprovisions(self, pool) -> bool:
        # replicated Ceph pools: a factor below 1 reserves room for replicas (CloudStack #6205/#6218)
        return True

    # ---------------------------------------------------------------- host operations

    def stats(self, ch, pool) -> dict:
        st = ch.call("pool_stats", pool=self.spec(pool))
        try:
            self.record_heartbeats(pool, self.heartbeats(ch, pool))
        except Exception:      # statistics stay useful without the heartbeat view
            pass
        return st

    def create_volume(self, ch, pool, volume, encryption: dict | None = None) -> dict:
        volume.format = "RAW"          # RBD images are raw; qcow2 features come from RBD itself
        return ch.call("volume_create", pool=self.spec(pool), name=volume.path, size=volume.size, format="raw",
                       provisioning="thin", **({"encryption": encryption} if encryption else {}))

    # ---------------------------------------------------------------- heartbeat (HA reads it later)

    def heartbeats(self, ch, pool, now: float | None = None) -> dict:
        """{host name: {"time", "interval", "age", "alive"}} from the pool's heartbeat object, read through
        any host that reaches the pool: a host is alive while its own beats are fresh, whoever reads them."""
        now = time.time() if now is None else now
        out = {}
        for host, beat in ch.call("rbd_heartbeats", pool=self.spec(pool))["hosts"].items():
            interval = beat.get("interval") or HEARTBEAT_SECONDS
            age = max(0.0, now - beat.get("time", 0))
            out[host] = {"time": beat.get("time"), "interval": interval, "age": round(age, 1),
                         "alive": age <= DEAD_AFTER_BEATS * interval}
        return out

    def record_heartbeats(self, pool, beats: dict) -> None:
        """Shown in listStoragePools' details as heartbeat.<host> = "Alive|Dead, last beat <UTC time>"."""
        details = {k: v for k, v in (pool.details or {}).items() if not k.startswith("heartbeat.")}
        for host, b in sorted(beats.items()):
            when = datetime.fromtimestamp(b["time"], timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            details[f"heartbeat.{host}"] = f"{'Alive' if b['alive'] else 'Dead'}, last beat {when}"
        pool.details = details

    # ---------------------------------------------------------------- templates

    def clone_volume(self, ch, pool, volume, base: str, base_format: str) -> dict:
        """template_cache's hook: the ROOT volume as an RBD clone of the cached copy's protected
        `volstack-base` snapshot (made on first use), flattened past the pool detail clonemaxdepth."""
        volume.format = "RAW"
        depth = int((pool.details or {}).get("clonemaxdepth") or CLONE_MAX_DEPTH)
        return ch.call("rbd_clone", pool=self.spec(pool), parent=base, snapshot="volstack-base", name=volume.path,
                       size=volume.size, max_depth=depth)

    def delete_volume(self, ch, pool, volume) -> None:
        """The image's snapshots go first (their clones are flattened; backups on image stores stay)."""
        ch.call("rbd_snapshot_purge", pool=self.spec(pool), name=volume.path)
        super().delete_volume(ch, pool, volume)

    # ---------------------------------------------------------------- snapshots (services/snapshots_rbd.py)

    def snapshots(self, ch, pool, volume) -> set:
        """Names of the RBD snapshots the volume's image has now (empty when the image is gone)."""
        from volstack.errors import NotFound
        try:
            return {x["name"] for x in ch.call("rbd_info", pool=self.spec(pool), name=volume.path)["snapshots"]}
        except NotFound:
            return set()

    def take_snapshot(self, ch, pool, volume, snap_name: str) -> dict:
        """A native RBD snapshot of the volume's image (crash-consistent for a running guest)."""
        return ch.call("rbd_snapshot_create", pool=self.spec(pool), name=volume.path, snapshot=snap_name)

    def revert_snapshot(self, ch, pool, volume, snap_name: str) -> dict:
        """Roll the image back (the agent refuses while a running guest uses it)."""
        return ch.call("rbd_snapshot_rollback", pool=self.spec(pool), name=volume.path, snapshot=snap_name)

    def delete_snapshot(self, ch, pool, volume, snap_name: str, flatten_children: bool = False) -> bool:
        """Remove the RBD snapshot; its clones are flattened first with flatten_children, else it is refused
        while they exist (Busy)."""
        return ch.call("rbd_snapshot_delete", pool=self.spec(pool), name=volume.path, snapshot=snap_name,
                       flatten_children=flatten_children)["removed"]

    def backup_snapshot(self, ch, pool, volume, snap_name: str, dst_spec: dict, dst_name: str,
                        since: str | None = None, progress=None) -> dict:
        """Stream the snapshot (or only its changes since `since`, while the image has it) to an image store in
        `rbd export-diff` format."""
        from volstack.drivers.hosts import run_long
        return run_long(ch, "rbd_export_diff", progress, pool=self.spec(pool), name=volume.path,
                        snapshot=snap_name, from_snapshot=since, dst_pool=dst_spec, dst_name=dst_name)

    def clone_snapshot(self, ch, pool, parent, snap_name: str, volume) -> dict:
        """A new volume as a clone of another volume's (protected) snapshot in this pool."""
        volume.format = "RAW"
        depth = int((pool.details or {}).get("clonemaxdepth") or CLONE_MAX_DEPTH)
        return ch.call("rbd_clone", pool=self.spec(pool), parent=parent.path, snapshot=snap_name, name=volume.path,
                       size=volume.size, max_depth=depth)
