"""The `volstack` command: up, serve, apply, rotate-key."""
import argparse
import logging
import os
import secrets
import signal
import sys
from pathlib import Path

import yaml

from volstack.private import restrict_umask, tighten
from volstack.stopsignal import StopSignal

BUILTIN_DATACENTER = {
    "zones": [{"name": "zone1", "networktype": "Advanced", "localstorageenabled": True,
               "pods": [{"name": "pod1", "clusters": [{"name": "cluster1", "hypervisor": "KVM"}]}]}],
    # The built-in pool is this host's local storage, so the built-in offerings ask for local storage.
    "disk_offerings": [{"name": "Small", "displaytext": "Small Disk, 5 GB, local", "disksize": 5, "storagetype": "local"},
                       {"name": "Custom", "displaytext": "Custom Disk, local", "customized": True, "storagetype": "local"}],
    "service_offerings": [{"name": "Small Instance", "displaytext": "Small Instance, 1 CPU, 512 MB, 2 GB local root",
                           "cpunumber": 1, "cpuspeed": 500, "memory": 512, "rootdisksize": 2, "storagetype": "local"}],
}


def _start_local_agent(ms, data: Path):
    """`volstack up` runs one host agent beside the management server and a local pool on this host."""
    import re
    import subprocess
    from sqlalchemy import select
    from volstack.db.models import Cluster, Host, Pod, Zone
    from volstack.services import datacenter, infra
    from volstack.services.context import system_context
    state = data / "agent"
    _replace_running_agent(state)
    # the agent ends with `up` however `up` ends (kill -9 included): it gets SIGTERM when its parent dies, and
    # its guests keep running for the next `up` (PR_SET_PDEATHSIG; a SIGTERM stops the agent cleanly)
    proc = subprocess.Popen([sys.executable, "-m", "volstack.agent", "--state-dir", str(state), "--name",
                             "localhost", "--listen", "127.0.0.1:0"], stdout=subprocess.PIPE,
                            stderr=open(data / "agent.log", "ab"), stdin=subprocess.DEVNULL,
                            preexec_fn=_end_with_parent)
    line = proc.stdout.readline().decode()
    m = re.search(r"listening on (http://\S+)", line)
    if not m:
        proc.kill()
        raise SystemExit(f"volstack up: the host agent did not start; see {data / 'agent.log'}")
    url, token = m.group(1), (state / "token").read_text().strip()
    ctx = system_context()
    with ms.db.session() as s:
        zone = s.scalar(select(Zone).where(Zone.name == "zone1"))
        host = s.scalar(select(Host).where(Host.zone_id == zone.id, Host.name == "localhost"))
        if host is None:
            pod = s.scalar(select(Pod).where(Pod.zone_id == zone.id, Pod.name == "pod1"))
            cl = s.scalar(select(Cluster).where(Cluster.pod_id == pod.id, Cluster.name == "cluster1"))
            infra.add_host(s, ctx, zone.uuid, pod.uuid, url, "KVM", clusterid=cl.uuid, password=token)
        else:              # the agent listens on a new port each run
            from volstack import crypto
            host.url, host.credential, host.state = url, crypto.encrypt(token), "Up"
    (data / "primary").mkdir(exist_ok=True)
    (data / "images").mkdir(exist_ok=True)
    local = {"storage_pools": [{"name": "local-primary", "zone": "zone1", "host": "localhost",
                                "url": f"file://localhost{data / 'primary'}"}],
             "image_stores": [{"name": "local-images", "zone": "zone1", "provider": "Filesystem",
                               "url": f"file://{data / 'images'}"}]}
    template = _builtin_template()
    if template:
        local["templates"] = [{"name": "volstack-tiny", "zone": "zone1", "file": str(template),
                               "displaytext": "volstack tiny guest (BIOS, SYSLINUX, busybox)",
                               "ostype": "Other Linux (64-bit)"}]
    datacenter.apply(ms.db, ctx, local)
    return proc


def _end_with_parent() -> None:
    import ctypes
    ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)     # PR_SET_PDEATHSIG


def _replace_running_agent(state: Path, timeout: float = 30) -> None:
    """An agent still running on this data directory (its `up` was killed before it could end it, or it was
    started by hand) is stopped so that this `up` runs its own: SIGTERM (guests keep running and the new agent
    adopts them), SIGKILL if it does not end in time. Only a process whose command line names this state
    directory is signalled."""
    import time
    from volstack.agent.main import lock_holder
    pid = lock_holder(state)
    if pid is None:
        return
    try:
        cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        cmdline = []
    if str(state).encode() not in cmdline and str(state.resolve()).encode() not in cmdline:
        raise SystemExit(f"volstack up: the agent lock of {state} is held by PID {pid}, which is not its agent; "
                         "stop that process first")
    print(f"# replacing the host agent left running on {state} (PID {pid}); its guests keep running",
          file=sys.stderr, flush=True)
    for sig, wait in ((signal.SIGTERM, timeout), (signal.SIGKILL, 10)):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + wait
        while time.monotonic() < deadline:
            if lock_holder(state) is None:
                return
            time.sleep(0.1)
    raise SystemExit(f"volstack up: the agent left running on {state} (PID {pid}) did not stop")


def _builtin_template() -> Path | None:
    """The built-in template's image (scripts/build-template.sh builds it at install time)."""
    cache = Path(os.environ.get("VOLSTACK_TEMPLATE_DIR") or Path(os.environ.get("XDG_CACHE_HOME") or
                                                                  Path.home() / ".cache") / "volstack" / "template")
    path = cache / "volstack-tiny.qcow2"
    if not path.exists():
        print(f"# no built-in template at {path}: run scripts/build-template.sh", file=sys.stderr)
        return None
    return path


def _server(db_url, key_file, host, port, **kw):
    from volstack.management import ManagementServer
    return ManagementServer(db_url, key_file, host=host, port=port, **kw)


_stop = None


def _catch_signals():
    """Installed before start-up so that a signal during start-up still stops cleanly."""
    global _stop
    _stop = StopSignal()


def _wait_for_signal():
    _stop.wait()


def cmd_up(args) -> int:
    from volstack.db.engine import sqlite_url
    from volstack.services import datacenter
    from volstack.services.context import system_context
    _catch_signals()
    data = Path(args.data_dir).resolve()
    data.mkdir(parents=True, exist_ok=True)
    tighten(data)            # a data dir written before files were private (issue 11): 0700 / 0600 from now on
    pw_file = data / "admin.password"
    if not pw_file.exists():
        fd = os.open(pw_file, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_urlsafe(12) + "\n")
    password = pw_file.read_text().strip()
    ms = _server(sqlite_url(data), data / "volstack.key", args.host, args.port, admin_password=password)
    datacenter.apply(ms.db, system_context(), BUILTIN_DATACENTER)
    agent = _start_local_agent(ms, data)
    ms.start()
    ini = data / "cloudstack.ini"
    ini.write_text(f"[cloudstack]\nendpoint = {ms.endpoint}\nkey = {ms.admin.api_key}\nsecret = {ms.admin_secret}\n"
                   "timeout = 60\n")
    os.chmod(ini, 0o600)
    print(f"export CLOUDSTACK_ENDPOINT={ms.endpoint}")
    print(f"export CLOUDSTACK_KEY={ms.admin.api_key}")
    print(f"export CLOUDSTACK_SECRET={ms.admin_secret}")
    print(f"# admin password (login command, cloudmonkey): {password}   cs config: {ini}", flush=True)
    print("# volstack is up; Ctrl-C stops it", file=sys.stderr, flush=True)
    _wait_for_signal()
    ms.stop()
    agent.terminate()        # the agent leaves its guests running; the next `up` re-adopts them
    agent.wait(timeout=30)
    return 0


def cmd_serve(args) -> int:
    _catch_signals()
    ms = _server(args.db, args.key_file, args.host, args.port, workers=args.workers, name=args.name,
                 heartbeat_seconds=args.heartbeat_seconds)
    ms.start()
    print(f"volstack management server {ms.jobs.name} on {ms.endpoint}", flush=True)
    _wait_for_signal()
    ms.stop()
    return 0


def cmd_rotate_key(args) -> int:
    from volstack.db.engine import Database, sqlite_url
    from volstack.errors import CloudError
    from volstack.services import keys
    url = args.db or sqlite_url(args.data_dir)
    key_file = args.key_file or Path(args.data_dir) / "volstack.key"
    try:
        counts = keys.rotate(Database(url), key_file)
    except CloudError as exc:
        print(f"volstack rotate-key: {exc.text}", file=sys.stderr)
        return 1
    print(f"new key in {key_file}; re-wrapped " + ", ".join(f"{n} {what}" for what, n in counts.items())
          + " (no volume data touched); restart every management server with this key file", flush=True)
    return 0


def cmd_apply(args) -> int:
    from volstack import crypto
    from volstack.api import commands  # noqa: F401
    from volstack.db.engine import Database, sqlite_url
    from volstack.errors import CloudError
    from volstack.services import accounts, datacenter
    from volstack.services.context import system_context
    url = args.db or sqlite_url(args.data_dir)
    key_file = args.key_file or Path(args.data_dir) / "volstack.key"
    crypto.load_key(key_file)
    db = Database(url)
    db.upgrade()
    with db.session() as s:
        accounts.bootstrap(s)
    doc = yaml.safe_load(Path(args.file).read_text())
    try:
        _typed_by_api(doc)
        for line in datacenter.apply(db, system_context(), doc or {}):
            print(line)
    except CloudError as exc:
        print(f"volstack apply: {exc.text}", file=sys.stderr)
        return 1
    return 0


# The apply sections whose entries are an API command's parameters: their values are typed as the API types
# them ("5" is the integer 5, "yes" for a boolean is refused with the API's message).
_API_SECTIONS = {"disk_offerings": "createDiskOffering", "service_offerings": "createServiceOffering",
                 "storage_pools": "createStoragePool"}


def _typed_by_api(doc) -> None:
    from volstack.api.binding import convert
    from volstack.api.registry import API, BOOLEAN, INTEGER, LONG, SHORT, STRING
    for section, command in _API_SECTIONS.items():
        items = doc.get(section) if isinstance(doc, dict) else None
        cmd = API.commands[command]
        params = {p.name: p for p in cmd.params if p.type in (SHORT, INTEGER, LONG, BOOLEAN, STRING)}
        for item in items if isinstance(items, list) else ():
            for key, value in (item.items() if isinstance(item, dict) else ()):
                if key in params and isinstance(value, (str, int, float, bool)):
                    raw = ("true" if value else "false") if isinstance(value, bool) else str(value)
                    item[key] = convert(None, cmd, params[key], raw)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="volstack", description="Storage control plane for KVM clouds (CloudStack API)")
    ap.add_argument("-v", "--verbose", action="store_true")
    sub = ap.add_subparsers(dest="cmd", required=True)

    up = sub.add_parser("up", help="run everything on this machine on the embedded SQLite default")
    up.add_argument("--data-dir", default="volstack-data")
    up.add_argument("--port", type=int, default=8080)
    up.add_argument("--host", default="127.0.0.1")
    up.set_defaults(fn=cmd_up)

    serve = sub.add_parser("serve", help="run a management server on any database")
    serve.add_argument("--db", required=True, help="sqlite:///path/volstack.db or postgresql://user@host:port/db")
    serve.add_argument("--key-file", required=True, help="file with the key that encrypts secrets (shared by all servers)")
    serve.add_argument("--port", type=int, default=8080)
    serve.add_argument("--host", default="127.0.0.1")
    serve.add_argument("--workers", type=int, default=4, help="job worker threads")
    serve.add_argument("--name", help="this server's name (default: host name); a restart under the same name "
                                      "reconciles the jobs the previous run left")
    serve.add_argument("--heartbeat-seconds", type=float, default=5.0,
                       help="how often this server heartbeats; another server's jobs are taken over once its "
                            "heartbeat is 3 of these old")
    serve.set_defaults(fn=cmd_serve)

    apply = sub.add_parser("apply", help="create or update a datacenter described in a YAML file")
    apply.add_argument("file")
    apply.add_argument("--data-dir", default="volstack-data")
    apply.add_argument("--db", help="database URL (default: the SQLite file in --data-dir)")
    apply.add_argument("--key-file")
    apply.set_defaults(fn=cmd_apply)

    rotate = sub.add_parser("rotate-key", help="replace the key that encrypts stored secrets (volume passphrases, "
                                               "API keys, host and pool credentials); stop the servers first")
    rotate.add_argument("--data-dir", default="volstack-data")
    rotate.add_argument("--db", help="database URL (default: the SQLite file in --data-dir)")
    rotate.add_argument("--key-file", help="default: volstack.key in --data-dir")
    rotate.set_defaults(fn=cmd_rotate_key)

    from volstack.agent.main import add_parser as add_agent_parser
    add_agent_parser(sub)

    args = ap.parse_args(argv)
    restrict_umask()         # every file volstack and its children create is its own (volstack/private.py)
    logging.basicConfig(level=logging.INFO if args.verbose else logging.WARNING,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    return (getattr(args, "fn", None) or args.func)(args)


if __name__ == "__main__":
    sys.exit(main())
