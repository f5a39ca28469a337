"""KVM hosts are `volstack agent` processes: joining them, and watching them (heartbeat, pool stats)."""
import logging
from datetime import timedelta
from urllib.parse import urlparse

from sqlalchemy import select

from volstack import crypto
from volstack.db.models import Host, utcnow
from volstack.db.storage_models import StoragePool
from volstack.drivers.hosts import channel
from volstack.errors import CloudError, InvalidParameter, ResourceUnavailable
from volstack.services import events, infra, reconcile

log = logging.getLogger("volstack.agents")
PROTOCOL = 1


def _kvm_connect(s, host: Host, url, username, password) -> None:
    """addHost hypervisor=KVM url=http://agent:port password=<the agent's token>."""
    from volstack.agent.client import AgentClient
    if not password:
        raise InvalidParameter("Pass the agent's token as password (it is in the agent's state dir, file 'token')")
    p = urlparse(url if "://" in url else "http://" + url)
    if p.scheme not in ("http", "https") or not p.port:
        raise InvalidParameter(f"A KVM host URL is the agent's address: http://<host>:<port>, not {url}")
    try:
        hello = AgentClient(url, password, timeout=10).hello()
    except CloudError as exc:
        raise ResourceUnavailable(f"Cannot reach the agent at {url}: {exc.text}") from None
    if hello.get("protocol") != PROTOCOL:
        raise InvalidParameter(f"The agent at {url} speaks protocol {hello.get('protocol')}; this server speaks {PROTOCOL}")
    name = hello.get("hostname") or p.hostname
    if s.scalar(select(Host).where(Host.zone_id == host.zone_id, Host.name == name, Host.id != host.id)):
        raise InvalidParameter(f"A host with name {name} already exists in this zone")
    host.name, host.ip_address = name, p.hostname
    host.credential = crypto.encrypt(password)
    host.version, host.state, host.last_ping = hello.get("version"), "Up", utcnow()
    host.details = {"capabilities": hello.get("capabilities", {}), "agent_hypervisor": hello.get("hypervisor"),
                    "agent_boot": hello.get("boot")}


infra.register_host_connector("KVM", _kvm_connect)


def check_hosts(db, ctx, down_after_seconds: float = 30, submit=None) -> None:
    """Heartbeat: ping every KVM agent; a host that stopped answering goes Down, and Up again when it does.
    Every live host is then reconciled with the database (services/reconcile.py): submit queues the tasks."""
    with db.session(readonly=True) as s:
        hosts = list(s.scalars(select(Host).where(Host.hypervisor == "KVM")))
    for host in hosts:
        try:
            boot = channel(host).hello().get("boot")
            alive = True
        except CloudError:
            alive = False
        with db.session() as s:
            row = s.get(Host, host.id)
            if row is None:
                continue
            if alive:
                if row.state != "Up":
                    events.record(s, ctx, "HOST.UP", f"Host {row.name} is reachable again", resource_type="Host",
                                  resource_uuid=row.uuid)
                row.state, row.last_ping = "Up", utcnow()
                if boot and boot != (row.details or {}).get("agent_boot"):
                    row.details = {**(row.details or {}), "agent_boot": boot}
                    s.commit()
                    _reconnect_pools(s, ctx, row)
            elif row.state == "Up" and (row.last_ping is None or utcnow() - row.last_ping > timedelta(seconds=down_after_seconds)):
                row.state = "Down"
                events.record(s, ctx, "HOST.DOWN", f"Host {row.name} stopped answering", level="WARN",
                              resource_type="Host", resource_uuid=row.uuid)
        if alive and submit is not None:
            reconcile.reconcile_host(db, host, submit)


def _reconnect_pools(s, ctx, host: Host) -> None:
    """The agent restarted (a new boot id): it keeps no pool secrets, so the pools that need the host's own
    activity (an RBD pool's heartbeat) are connected again now rather than at their next statistics."""
    from volstack.db.storage_models import StoragePoolHost
    from volstack.drivers import driver_for
    pools = s.scalars(select(StoragePool).join(StoragePoolHost, StoragePoolHost.pool_id == StoragePool.id)
                      .where(StoragePoolHost.host_id == host.id, StoragePool.state.in_(("Up", "Disabled")))
                      .order_by(StoragePool.id))
    done, failed = [], []
    for pool in pools:
        drv = driver_for(pool.provider)
        if not drv.CAPABILITIES.get("heartbeat"):
            continue
        try:
            channel(host).call("pool_connect", pool=drv.spec(pool))
            done.append(pool.name)
        except CloudError as exc:
            failed.append(f"{pool.name} ({exc.text})")
    if done or failed:
        events.record(s, ctx, "HOST.RECONNECT", f"The agent of host {host.name} restarted; storage pools connected "
                      f"again: {', '.join(done) or 'none'}" + (f"; failed: {'; '.join(failed)}" if failed else ""),
                      level="WARN" if failed else "INFO", resource_type="Host", resource_uuid=host.uuid)


def refresh_pool_stats(db) -> None:
    from volstack.services import pools
    with db.session(readonly=True) as s:
        ids = list(s.scalars(select(StoragePool.id).where(StoragePool.state.in_(("Up", "Disabled")))))
    for pid in ids:
        with db.session() as s:
            try:
                pools.refresh_stats(s, s.get(StoragePool, pid))
            except CloudError as exc:
                log.info("pool stats: %s", exc.text)
