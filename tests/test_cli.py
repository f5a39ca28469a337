"""The `volstack` command as a user runs it: up, apply, serve (two servers on one PostgreSQL)."""
import json
import os
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml



VOLSTACK = str(Path(sys.executable).with_name("volstack"))


def _read_until(proc, predicate, timeout=60):
    lines = []
    buf = b""
    end = __import__("time").monotonic() + timeout
    while __import__("time").monotonic() < end:
        r, _, _ = select.select([proc.stdout], [], [], 0.5)
        if r:
            chunk = os.read(proc.stdout.fileno(), 4096)
            if not chunk:
                break
            buf += chunk
            *done, buf = buf.split(b"\n")
            lines += [ln.decode() for ln in done]
            if predicate(lines):
                return lines
        elif proc.poll() is not None:
            break
    raise AssertionError(f"volstack did not print what was expected: {lines} {buf!r} {proc.stderr.read() if proc.poll() is not None else ''}")


def _stop(proc):
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(timeout=30) == 0


def test_up_prints_keys_writes_cloudstack_ini_and_serves_a_ready_zone(tmp_path):
    data = tmp_path / "data"
    proc = subprocess.Popen([VOLSTACK, "up", "--data-dir", str(data), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        lines = _read_until(proc, lambda ls: any(l.startswith("export CLOUDSTACK_SECRET=") for l in ls))
        env = dict(l[len("export "):].split("=", 1) for l in lines if l.startswith("export "))
        assert set(env) == {"CLOUDSTACK_ENDPOINT", "CLOUDSTACK_KEY", "CLOUDSTACK_SECRET"}
        # the cs CLI finds cloudstack.ini in the data dir
        clean = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSTACK_")}
        out = subprocess.run([str(Path(sys.executable).with_name("cs")), "listZones"], cwd=data, env=clean,
                             capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        assert '"name": "zone1"' in out.stdout
        ini = (data / "cloudstack.ini").read_text()
        assert env["CLOUDSTACK_ENDPOINT"] in ini and oct((data / "cloudstack.ini").stat().st_mode)[-3:] == "600"
        hosts = subprocess.run([str(Path(sys.executable).with_name("cs")), "listClusters"], cwd=data, env=clean,
                               capture_output=True, text=True, timeout=60)
        assert '"name": "cluster1"' in hosts.stdout
        cs = str(Path(sys.executable).with_name("cs"))
        hosts = subprocess.run([cs, "listHosts"], cwd=data, env=clean, capture_output=True, text=True, timeout=60)
        assert '"state": "Up"' in hosts.stdout and '"hypervisor": "KVM"' in hosts.stdout
        pools = subprocess.run([cs, "listStoragePools"], cwd=data, env=clean, capture_output=True, text=True, timeout=60)
        assert '"name": "local-primary"' in pools.stdout and '"type": "Filesystem"' in pools.stdout
        stores = subprocess.run([cs, "listImageStores"], cwd=data, env=clean, capture_output=True, text=True, timeout=60)
        assert '"name": "local-images"' in stores.stdout
        tmpl = subprocess.run([cs, "listTemplates", "templatefilter=featured"], cwd=data, env=clean,
                              capture_output=True, text=True, timeout=60)
        assert '"name": "volstack-tiny"' in tmpl.stdout and '"isready": true' in tmpl.stdout
        # a newcomer deploys a VM from the built-in template and it really boots (BIOS -> SYSLINUX -> kernel)
        def cs_json(*args):
            out = subprocess.run([cs, *args], cwd=data, env=clean, capture_output=True, text=True, timeout=300)
            assert out.returncode == 0, out.stdout + out.stderr
            return json.loads(out.stdout)
        zone = cs_json("listZones")["zone"][0]["id"]
        so = cs_json("listServiceOfferings", "name=Small Instance")["serviceoffering"][0]["id"]
        tiny = cs_json("listTemplates", "templatefilter=featured", "name=volstack-tiny")["template"][0]["id"]
        vm = cs_json("deployVirtualMachine", f"zoneid={zone}", f"serviceofferingid={so}", f"templateid={tiny}")
        vm = vm["virtualmachine"]
        assert vm["state"] == "Running" and vm["templateid"] == tiny
        console = data / "agent" / "vms" / vm["id"] / "console.log"
        deadline = time.monotonic() + 120
        while b"VOLSTACK-GUEST READY" not in (console.read_bytes() if console.exists() else b""):
            assert time.monotonic() < deadline, f"the guest did not boot: {console}"
            time.sleep(0.2)
        cs_json("destroyVirtualMachine", f"id={vm['id']}", "expunge=true")
    finally:
        _stop(proc)
    # a second `up` on the same data dir keeps the same keys
    proc = subprocess.Popen([VOLSTACK, "up", "--data-dir", str(data), "--port", "0"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        lines = _read_until(proc, lambda ls: any(l.startswith("export CLOUDSTACK_SECRET=") for l in ls))
        assert f"export CLOUDSTACK_KEY={env['CLOUDSTACK_KEY']}" in lines
    finally:
        _stop(proc)


DATACENTER = {
    "settings": {"storage.overprovisioning.factor": 3, "storage.cleanup.enabled": False},
    "zones": [{"name": "dc-zone", "networktype": "Advanced", "dns1": "10.0.0.53",
               "pods": [{"name": "dc-pod", "gateway": "10.1.0.1", "netmask": "255.255.255.0",
                         "clusters": [{"name": "dc-sim", "hypervisor": "Simulator",
                                       "hosts": [{"url": "http://sim-a"}, {"url": "http://sim-b", "hosttags": "fast"}]}]}]}],
    "accounts": [{"name": "team", "username": "team", "password": "pw", "domain": "/engineering",
                  "limits": {"volume": 50}}],
}


def test_apply_is_idempotent(tmp_path):
    f = tmp_path / "dc.yaml"
    f.write_text(yaml.safe_dump(DATACENTER))
    run = lambda: subprocess.run([VOLSTACK, "apply", str(f), "--data-dir", str(tmp_path / "d")],
                                 capture_output=True, text=True, timeout=120)
    first = run()
    assert first.returncode == 0, first.stderr
    assert "created zone dc-zone" in first.stdout and "created host sim-b" in first.stdout
    assert "updated setting storage.overprovisioning.factor = 3" in first.stdout
    second = run()
    assert second.returncode == 0, second.stderr
    assert all(l.startswith("unchanged") for l in second.stdout.splitlines()), second.stdout
    DATACENTER["zones"][0]["dns1"] = "10.0.0.54"
    f.write_text(yaml.safe_dump(DATACENTER))
    third = run()
    assert "updated zone dc-zone: dns1" in third.stdout
    f.write_text(yaml.safe_dump({"volumes": []}))
    bad = run()
    assert bad.returncode == 1 and "Unknown section(s) volumes" in bad.stderr


@pytest.mark.slow
def test_two_serve_processes_on_one_postgres_share_work_without_running_a_job_twice(postgres, tmp_path):
    from support import client
    from helpers import wait_job
    url = postgres.createdb("cli_two")
    key = tmp_path / "shared.key"
    procs = [subprocess.Popen([VOLSTACK, "serve", "--db", url, "--key-file", str(key), "--port", "0",
                               "--name", f"ms{i}"], stdout=subprocess.PIPE, stderr=subprocess.PIPE) for i in (1, 2)]
    try:
        endpoints = []
        for p in procs:
            line = _read_until(p, lambda ls: any("management server" in l for l in ls))[-1]
            endpoints.append(line.split(" on ")[1])

        class Ms:   # enough of a ManagementServer for the test helpers
            def __init__(self, endpoint):
                from volstack import crypto
                from volstack.db.engine import Database
                from volstack.db.models import User
                from volstack.services.accounts import user_secret
                crypto.load_key(key)
                with Database(url).session() as s:
                    admin = s.get(User, 2)
                    self.admin, self.admin_secret = admin, user_secret(admin)
                self.endpoint = endpoint
        servers = [Ms(e) for e in endpoints]
        api = client(servers[0])
        ids = [api.createAccount(username=f"u{i}", password="pw", accounttype=0)["account"]["id"] for i in range(24)]
        raw = [client(ms, fetch_result=False) for ms in servers]
        jobs = [raw[i % 2].disableAccount(id=acc, lock=False)["jobid"] for i, acc in enumerate(ids)]
        done = [wait_job(servers[0], j) for j in jobs]
        assert all(j["jobstatus"] == 1 for j in done)
        assert {j["managementservername"] for j in done} == {"ms1", "ms2"}
        events = api.listEvents(type="ACCOUNT.DISABLE", pagesize=-1)["event"]
        assert len(events) == 24, "each job ran exactly once"
    finally:
        for p in procs:
            _stop(p)



