"""Settings: every key declared once with CloudStack's name, default, scopes and description.

Services read settings only through `Settings.get(KEY, scope ids...)`, which returns the typed value
of the most specific scope that has one, then the global value, then the default.
"""
import ipaddress
import logging
import math
import uuid as _uuid
from dataclasses import dataclass
from typing import Callable

from sqlalchemy import select

from volstack.db.models import ConfigValue
from volstack.errors import InvalidParameter

log = logging.getLogger("volstack.settings")

# Most specific first: the order in which a value is looked up.
SCOPE_ORDER = ("storagepool", "imagestore", "cluster", "zone", "account", "domain", "global")
# CloudStack's names for the scopes in listConfigurations' 'scope' field.
SCOPE_LABEL = {"storagepool": "storagepool", "imagestore": "imagestore", "cluster": "cluster",
               "zone": "zone", "account": "account", "domain": "domain", "global": "global"}


@dataclass(frozen=True)
class ConfigKey:
    name: str
    type: type
    default: object
    description: str
    category: str = "Storage"
    scopes: tuple = ("global",)
    min: float | None = None         # numbers: the accepted range (ints default to 0 .. 2^31-1, as Java's Integer)
    max: float | None = None
    check: Callable | None = None    # check(value) -> None, raising InvalidParameter: the format of a string

    def validate(self, raw: str | None):
        """The typed value of raw, refused (431) unless it fits the type, the range and the format: a value that
        would break what reads it (a session timeout past any date, a non-CIDR site list) never gets stored."""
        value = self.parse(raw)
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, (int, float)):
            if isinstance(value, float) and not math.isfinite(value):
                raise InvalidParameter(f"Value of {self.name} must be a finite number: '{raw}' is not")
            lo = self.min if self.min is not None else 0
            hi = self.max if self.max is not None else (2 ** 31 - 1 if self.type is int else None)
            if value < lo or (hi is not None and value > hi):
                raise InvalidParameter(f"Value of {self.name} must be between {lo} and {hi if hi is not None else 'any'}"
                                       f": '{raw}' is not")
        elif any(ord(c) < 32 or ord(c) == 127 for c in value):
            raise InvalidParameter(f"Value of {self.name} must not contain control characters")
        if self.check is not None and value != "":
            self.check(self, value)
        return value

    def parse(self, raw: str | None):
        if raw is None or raw == "":
            return self.default if raw is None else (None if self.type is not str else "")
        try:
            if self.type is bool:
                low = raw.strip().lower()
                if low not in ("true", "false"):
                    raise ValueError
                return low == "true"
            return self.type(raw)
        except ValueError:
            kind = {bool: "a boolean (true/false)", int: "an integer", float: "a number"}.get(self.type, "a string")
            raise InvalidParameter(f"Value of {self.name} must be {kind}: '{raw}' is not") from None

    def format(self, value) -> str | None:
        if value is None:
            return None
        if isinstance(value, bool):
            return "true" if value else "false"
        return str(value)


KEYS: dict[str, ConfigKey] = {}


def _key(name, type_, default, description, category="Storage", scopes=("global",), **limits) -> ConfigKey:
    """limits: min=, max= (numbers), check= (strings)."""
    key = ConfigKey(name, type_, default, description, category, tuple(scopes) + (("global",) if "global" not in scopes else ()),
                    **limits)
    KEYS[name] = key
    return key


def _cidrs(key, value: str) -> None:
    for part in value.split(","):
        try:
            ipaddress.ip_network(part.strip(), strict=False)
        except ValueError:
            raise InvalidParameter(f"Value of {key.name} must be a comma-separated list of CIDRs (e.g. "
                                   f"10.0.0.0/8,192.168.1.5/32): '{part.strip()}' is not one") from None


def _one_of(*choices):
    def check(key, value: str) -> None:
        if value not in choices:
            raise InvalidParameter(f"Value of {key.name} must be one of {', '.join(choices)}: '{value}' is not")
    return check


def _uuid_value(key, value: str) -> None:
    try:
        _uuid.UUID(value)
    except ValueError:
        raise InvalidParameter(f"Value of {key.name} must be a uuid: '{value}' is not") from None


_ALGORITHMS = _one_of("random", "firstfit", "userdispersing", "userconcentratedpod_random",
                      "userconcentratedpod_firstfit", "firstfitleastconsumed")
_FRACTION = dict(min=0.0, max=1.0)
_LIMIT = dict(min=-1)                # -1: unlimited


G, Z, C, P, A, I, D = "global", "zone", "cluster", "storagepool", "account", "imagestore", "domain"

# ---- capacity and allocation
OVERPROVISIONING = _key("storage.overprovisioning.factor", float, 2.0,
    "Used for storage overprovisioning calculation; available storage will be (actualStorageSize * storage.overprovisioning.factor)", scopes=(P,), min=0.0)
CAPACITY_DISABLE = _key("pool.storage.capacity.disablethreshold", float, 0.85,
    "Percentage (as a value between 0 and 1) of storage utilization above which allocators will disable using the pool for low storage available.", "Alert", (Z,), **_FRACTION)
ALLOCATED_DISABLE = _key("pool.storage.allocated.capacity.disablethreshold", float, 0.85,
    "Percentage (as a value between 0 and 1) of allocated storage utilization above which allocators will disable using the pool for low allocated storage available.", "Alert", (Z,), **_FRACTION)
SECONDARY_THRESHOLD = _key("secondary.storage.capacity.threshold", float, 0.90,
    "Percentage (as a value between 0 and 1) of secondary storage capacity threshold.", "Alert", **_FRACTION)
VOLUME_ALLOCATION_ALGORITHM = _key("volume.allocation.algorithm", str, "random",
    "Order in which storage pool within a cluster will be considered for volume allocation. The value can be 'random', 'firstfit', 'userdispersing', 'userconcentratedpod_random', 'userconcentratedpod_firstfit', or 'firstfitleastconsumed'.", "Advanced", check=_ALGORITHMS)
VM_ALLOCATION_ALGORITHM = _key("vm.allocation.algorithm", str, "random",
    "Order in which hosts within a cluster will be considered for VM/volume allocation. The value can be 'random', 'firstfit', 'userdispersing', 'userconcentratedpod_random', 'userconcentratedpod_firstfit', or 'firstfitleastconsumed'.", "Advanced", check=_ALGORITHMS)
PREFERRED_POOL = _key("preferred.storage.pool", str, "",
    "The UUID of preferred storage pool for allocation.", "Advanced", (A,), check=_uuid_value)
MATCH_POOL_TAGS = _key("match.storage.pool.tags.with.disk.offering", bool, True,
    "If true, volume's disk offering can be changed only with the matched storage tags", "Advanced", (Z,))
DISK_PROVISIONING_STRICTNESS = _key("disk.provisioning.type.strictness", bool, False,
    "If set to true, the disk is created only when there is a suitable storage pool that supports the disk provisioning type specified by the service/disk offering.", "Advanced", (Z,))
MOUNT_DISABLED_POOL = _key("mount.disabled.storage.pool", bool, False,
    "Mount all zone-wide or cluster-wide disabled storage pools after node reboot", "Advanced", (C,))

# ---- garbage collection and expunge
STORAGE_CLEANUP_ENABLED = _key("storage.cleanup.enabled", bool, True, "Enables/disables the storage cleanup thread.", "Advanced")
STORAGE_CLEANUP_INTERVAL = _key("storage.cleanup.interval", int, 86400, "The interval (in seconds) to wait before running the storage cleanup thread.", "Advanced")
STORAGE_CLEANUP_DELAY = _key("storage.cleanup.delay", int, 86400, "Determines how long (in seconds) to wait before actually expunging destroyed volumes. The default value = the default value of storage.cleanup.interval.", "Advanced")
ORPHAN_SCAN_INTERVAL = _key("storage.orphan.scan.interval", int, 3600, "How often (in seconds) pools and image stores are compared with the database for files that belong to nothing (0: never; volstack)", "Advanced", min=0)
ORPHAN_GRACE_PERIOD = _key("storage.orphan.grace.period", int, 86400, "How long (in seconds) a file that belongs to nothing is only reported before the orphan scan removes it (-1: report only; volstack)", "Advanced", min=-1)
TEMPLATE_CLEANUP_ENABLED = _key("storage.template.cleanup.enabled", bool, True, "Enable/disable template cleanup activity, only take effect when overall storage cleanup is enabled", "Storage")
EXPUNGE_DELAY = _key("expunge.delay", int, 86400, "Determines how long (in seconds) to wait before actually expunging destroyed vm. The default value = the default value of expunge.interval", "Advanced")
EXPUNGE_INTERVAL = _key("expunge.interval", int, 86400, "The interval (in seconds) to wait before running the expunge thread.", "Advanced")
ALLOW_USER_EXPUNGE = _key("allow.user.expunge.recover.volume", bool, True, "Determines whether users can expunge or recover their volume", "Advanced", (A,))

# ---- waits (volstack uses them only as progress-silence limits, never as wall clocks)
POOL_MAX_WAIT = _key("storage.pool.max.waitseconds", int, 3600, "Timeout (in seconds) to synchronize storage pool operations.", "Storage")
PRIMARY_DOWNLOAD_WAIT = _key("primary.storage.download.wait", int, 10800, "In second, timeout for download template to primary storage", "Storage")
KVM_OFFLINE_MIGRATION_WAIT = _key("kvm.storage.offline.migration.wait", int, 10800, "Timeout in seconds for offline (non-live) storage migration to complete on KVM", "Storage")
KVM_ONLINE_MIGRATION_WAIT = _key("kvm.storage.online.migration.wait", int, 86400, "Timeout in seconds for online (live) storage migration to complete on KVM (migrateVolume)", "Storage")

# ---- image stores
MAX_MIGRATE_SESSIONS = _key("secstorage.max.migrate.sessions", int, 2, "The max number of concurrent copy command execution sessions that an SSVM can handle", "Advanced")
MAX_DATA_MIGRATION_WAIT = _key("max.data.migration.wait.time", int, 15, "Maximum wait time (in minutes) for a data migration task before spawning a new SSVM", "Advanced")
MAX_SSVM_COUNT = _key("max.ssvm.count", int, 5, "Number of additional SSVMs to handle migration of data objects concurrently", "Advanced")
IMBALANCE_THRESHOLD = _key("image.store.imbalance.threshold", float, 0.3, "The storage imbalance threshold that is compared with the standard deviation percentage for a storage utilization metric. The value is a percentage in decimal format.", "Advanced", **_FRACTION)

# ---- snapshots
SNAPSHOT_MAX_HOURLY = _key("snapshot.max.hourly", int, 8, "Maximum recurring hourly snapshots to be retained for a volume. If the limit is reached, early snapshots from the start of the hour are deleted so that newer ones can be saved. This limit does not apply to manual snapshots. If set to 0, recurring hourly snapshots can not be scheduled.", "Snapshots")
SNAPSHOT_MAX_DAILY = _key("snapshot.max.daily", int, 8, "Maximum recurring daily snapshots to be retained for a volume. If the limit is reached, snapshots from the start of the day are deleted so that newer ones can be saved. This limit does not apply to manual snapshots. If set to 0, recurring daily snapshots can not be scheduled.", "Snapshots")
SNAPSHOT_MAX_WEEKLY = _key("snapshot.max.weekly", int, 8, "Maximum recurring weekly snapshots to be retained for a volume. If the limit is reached, snapshots from the beginning of the week are deleted so that newer ones can be saved. This limit does not apply to manual snapshots. If set to 0, recurring weekly snapshots can not be scheduled.", "Snapshots")
SNAPSHOT_MAX_MONTHLY = _key("snapshot.max.monthly", int, 8, "Maximum recurring monthly snapshots to be retained for a volume. If the limit is reached, snapshots from the beginning of the month are deleted so that newer ones can be saved. This limit does not apply to manual snapshots. If set to 0, recurring monthly snapshots can not be scheduled.", "Snapshots")
SNAPSHOT_DELTA_MAX = _key("snapshot.delta.max", int, 16, "max delta snapshots between two full snapshots.", "Snapshots")
KVM_SNAPSHOT_ENABLED = _key("kvm.snapshot.enabled", bool, True, "Whether volume snapshot is enabled on running instances on a KVM host", "Snapshots")
KVM_VMSTORAGE_SNAPSHOT = _key("kvm.vmstoragesnapshot.enabled", bool, True, "For live snapshot of virtual machine instance on KVM hypervisor without memory. Requires qemu version 1.6+ (on NFS or Local file system) and qemu-guest-agent installed on guest VM", "Snapshots", (C,))
VMSNAPSHOT_MAX = _key("vmsnapshot.max", int, 10, "Maximum vm snapshots for a single vm", "Snapshots")
KVM_INCREMENTAL_SNAPSHOT = _key("kvm.incremental.snapshot", bool, False, "Whether differential snapshots are enabled for KVM or not. When this is enabled, all KVM snapshots will be incremental. Bear in mind that it will generate a new full snapshot when the snapshot chain reaches the limit defined in snapshot.delta.max.", "Snapshots", (C,))
SNAPSHOT_BACKUP_TO_SECONDARY = _key("snapshot.backup.to.secondary", bool, True, "Indicates whether to always backup primary storage snapshot to secondary storage. When false, snapshots are kept only on primary storage (createSnapshot locationtype overrides it per snapshot).", "Snapshots")
BACKUP_RETRY = _key("backup.retry", int, 3, "Number of times to retry in creating backup of snapshot on secondary", "Snapshots")
BACKUP_RETRY_INTERVAL = _key("backup.retry.interval", int, 300, "Time in seconds between retries in backing up snapshot to secondary", "Snapshots")
SNAPSHOT_POLL_INTERVAL = _key("snapshot.poll.interval", int, 300, "The time interval in seconds when the management server polls for snapshots to be scheduled.", "Snapshots", min=1)
CONCURRENT_SNAPSHOTS_PER_HOST = _key("concurrent.snapshots.threshold.perhost", int, None, "Limits number of snapshots that can be handled by the host concurrently; default is NULL - unlimited", "Advanced")
SP_BYPASS_SECONDARY = _key("sp.bypass.secondary.storage", bool, False, "For StorPool Managed storage backup to secondary", "Advanced")

# ---- limits
MAX_ACCOUNT_VOLUMES = _key("max.account.volumes", int, 20, "The default maximum number of volumes that can be created for an account", "Account Defaults", **_LIMIT)
MAX_ACCOUNT_SNAPSHOTS = _key("max.account.snapshots", int, 20, "The default maximum number of snapshots that can be created for an account", "Account Defaults", **_LIMIT)
ALLOWED_INTERNAL_SITES = _key("secstorage.allowed.internal.sites", str, "", "Comma separated list of cidrs internal to the datacenter that can host template download servers, please note 0.0.0.0 is not a valid site", "Advanced", check=_cidrs)
ALLOW_PUBLIC_USER_TEMPLATES = _key("allow.public.user.templates", bool, True, "If false, users will not be able to create public templates.", "Advanced", scopes=("account",))
MAX_ACCOUNT_TEMPLATES = _key("max.account.templates", int, 20, "The default maximum number of templates that can be deployed for an account", "Account Defaults", **_LIMIT)
MAX_ACCOUNT_PRIMARY_GB = _key("max.account.primary.storage", int, 200, "The default maximum primary storage space (in GiB) that can be used for an account", "Account Defaults", **_LIMIT)
MAX_ACCOUNT_SECONDARY_GB = _key("max.account.secondary.storage", int, 400, "The default maximum secondary storage space (in GiB) that can be used for an account", "Account Defaults", **_LIMIT)
CUSTOM_DISK_MIN = _key("custom.diskoffering.size.min", int, 1, "Minimum size in GB for custom disk offering.", "Advanced")
CUSTOM_DISK_MAX = _key("custom.diskoffering.size.max", int, 1024, "Maximum size in GB for custom disk offering.", "Advanced")
MAX_VOLUME_SIZE = _key("storage.max.volume.size", int, 2000, "The maximum size for a volume (in GB).", "Storage")
MAX_UPLOAD_SIZE = _key("storage.max.volume.upload.size", int, 500, "The maximum size for a uploaded volume(in GB).", "Storage")
MAX_TEMPLATE_SIZE = _key("max.template.iso.size", int, 50, "The maximum size for a downloaded template or ISO (in GB).", "Advanced")

# ---- extract URLs and browser uploads (services/extracts.py, services/post_uploads.py)
EXTRACT_URL_EXPIRATION = _key("extract.url.expiration.interval", int, 14400, "The life of an extract URL after which it is deleted ", "Advanced")
EXTRACT_URL_CLEANUP = _key("extract.url.cleanup.interval", int, 7200, "The interval (in seconds) to wait before cleaning up the extract URL's ", "Advanced")
DISABLE_EXTRACTION = _key("disable.extraction", bool, False, "Flag for disabling extraction of template, isos and volumes", "Advanced")
UPLOAD_MONITORING_INTERVAL = _key("upload.monitoring.interval", int, 60, "Interval (in seconds) to check the status of volumes that are uploaded using HTTP POST request", "Advanced", min=1)
UPLOAD_OPERATION_TIMEOUT = _key("upload.operation.timeout", int, 10, "Time (in minutes) to wait before abandoning volume upload using HTTP POST request", "Advanced")

# ---- statistics, direct download
VOLUME_STATS_INTERVAL = _key("volume.stats.interval", int, 600000, "Interval (in milliseconds) to report volume statistics", "Advanced")
DD_CONNECT_TIMEOUT = _key("direct.download.connect.timeout", int, 5000, "Connection establishment timeout in milliseconds for direct download", "Advanced")
DD_SOCKET_TIMEOUT = _key("direct.download.socket.timeout", int, 5000, "Socket timeout (SO_TIMEOUT) in milliseconds for direct download", "Advanced")
DD_REQUEST_TIMEOUT = _key("direct.download.connection.request.timeout", int, 5000, "Requesting a connection from connection manager timeout in milliseconds for direct download", "Hidden")
DD_CERT_INTERVAL = _key("direct.download.certificate.background.task.interval", int, 0, "This interval (in hours) defines how often the certificates for direct download are uploaded to hosts. 0 means disabled.", "Advanced")
KVM_HA_FENCE = _key("kvm.ha.fence.on.storage.heartbeat.failure", bool, False, "Proceed fencing the host even the heartbeat failed for all storage pools", "Advanced", (Z,))

# ---- API server and jobs
DEFAULT_PAGE_SIZE = _key("default.page.size", int, 500, "Default page size for API list* commands", "Advanced", min=1)
JOB_EXPIRE_MINUTES = _key("job.expire.minutes", int, 1440, "Time (in minutes) for async-jobs to be kept in system", "Advanced")
JOB_CANCEL_THRESHOLD = _key("job.cancel.threshold.minutes", int, 60, "Time (in minutes) for async-jobs to be forcely cancelled if it has been in process for long. volstack cancels only jobs that stopped reporting progress for this long.", "Advanced")
ENFORCE_POST = _key("enforce.post.requests.and.timestamps", bool, False, "Enable/Disable whether the ApiServer only accepts POST requests and requires timestamps.", "Advanced")
JSON_CONTENT_TYPE = _key("json.content.type", str, "application/json; charset=UTF-8", "Http response content type for .js files (default is text/javascript)", "Advanced")
INCORRECT_LOGIN_ATTEMPTS = _key("incorrect.login.attempts.allowed", int, 5, "Incorrect login attempts allowed before the user is disabled", "Advanced", min=1)
SESSION_TIMEOUT = _key("session.timeout", int, 1800, "Session timeout in seconds for the UI and API login sessions", "Advanced", min=1)


class Settings:
    """Typed access to settings with CloudStack's scope fallback."""

    def __init__(self, db):
        self.db = db

    def get(self, key: ConfigKey, **scope_ids):
        """scope_ids: zone=, cluster=, storagepool=, account=, domain=, imagestore= (internal ids)."""
        with self.db.session(readonly=True) as s:     # a read never waits for a writer (SQLite: plain BEGIN)
            return self.value_in(s, key, **scope_ids)

    @staticmethod
    def value_in(s, key: ConfigKey, **scope_ids):
        """The same lookup inside a session the caller already holds."""
        wanted = [(sc, scope_ids[sc]) for sc in SCOPE_ORDER if sc != "global" and scope_ids.get(sc) is not None
                  and sc in key.scopes]
        rows = {(r.scope, r.scope_id): r.value for r in s.scalars(
            select(ConfigValue).where(ConfigValue.name == key.name))}
        for scope, sid in wanted + [("global", 0)]:
            if (scope, sid) in rows:
                try:
                    return key.validate(rows[(scope, sid)])
                except InvalidParameter as e:
                    # stored before values were validated (or edited by hand): the next scope or the default
                    # serves rather than every reader failing
                    log.warning("ignoring the %s value of %s: %s", scope, key.name, e.text)
        return key.default

    @staticmethod
    def many_in(s, keys, scope: str = "global", ids=(0,)) -> dict:
        """{(key name, id): value} for several keys and several objects of one scope in one query (a page of
        pools or accounts); an object without its own value gets the global one, then the default."""
        rows = {(r.name, r.scope, r.scope_id): r.value for r in s.scalars(
            select(ConfigValue).where(ConfigValue.name.in_([k.name for k in keys]),
                                      ConfigValue.scope.in_((scope, "global"))))}
        out = {}
        for k in keys:
            for i in ids:
                raw = rows.get((k.name, scope, i)) if scope in k.scopes else None
                if raw is None:
                    raw = rows.get((k.name, "global", 0))
                out[(k.name, i)] = k.parse(raw)
        return out

    def set(self, key: ConfigKey, value, scope: str = "global", scope_id: int = 0, session=None) -> None:
        raw = value if isinstance(value, str) or value is None else key.format(value)
        key.validate(raw)
        if scope not in key.scopes:
            raise InvalidParameter(f"Scope {scope} is not valid for {key.name}; it can be set at: {', '.join(key.scopes)}")

        def _write(s):
            row = s.scalar(select(ConfigValue).where(ConfigValue.name == key.name, ConfigValue.scope == scope,
                                                     ConfigValue.scope_id == scope_id))
            if row is None:
                s.add(ConfigValue(name=key.name, scope=scope, scope_id=scope_id, value=raw))
            else:
                row.value = raw
        if session is not None:
            _write(session)
        else:
            with self.db.session() as s:
                _write(s)


def key_by_name(name: str) -> ConfigKey:
    key = KEYS.get(name)
    if key is None:
        raise InvalidParameter(f"Configuration {name} does not exist")
    return key
