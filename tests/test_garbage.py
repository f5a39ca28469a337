"""Every declared command gets garbage in every parameter: never a 530 internal error, never a traceback."""
import json

import pytest

from support import client
from helpers import signed, wait_job
from volstack.api.registry import API

GARBAGE = ["", " ", "x" * 5000, "-1", "99999999999999999999999", "nan", "true", "ü\x01'\";--<tag>",
           "../../etc/passwd", "6f1c2f64-3a53-4c57-9d7a-5a0d2b9e6a11", "1,2,,3", "%00", "[0].a"]
ALLOWED = {200, 401, 405, 431, 432, 531, 533, 534, 535, 536}


@pytest.fixture
def world(server):
    """Real objects so that the other parameters of a command can point at something that exists."""
    api = client(server)
    zone = api.createZone(name="gz", networktype="Advanced")["zone"]
    pod = api.createPod(name="gp", zoneid=zone["id"], gateway="10.0.0.1", netmask="255.255.255.0",
                        startip="10.0.0.2", endip="10.0.0.9")["pod"]
    cluster = api.addCluster(clustername="gc", zoneid=zone["id"], podid=pod["id"], hypervisor="Simulator",
                             clustertype="CloudManaged")["cluster"][0]
    host = api.addHost(zoneid=zone["id"], podid=pod["id"], clusterid=cluster["id"], hypervisor="Simulator",
                       url="http://g-host")["host"][0]
    acc = api.createAccount(username="gu", password="pw", accounttype=0)["account"]
    dom = api.createDomain(name="gd")["domain"]
    return {"Zone": zone["id"], "Pod": pod["id"], "Cluster": cluster["id"], "Host": host["id"],
            "Account": acc["id"], "Domain": dom["id"], "User": acc["user"][0]["id"]}


def _call(server, params):
    status, headers, body = server.api.handle(list(signed(server, params).items()), {}, "POST")
    code = int(status.split()[0])
    text = body.decode()
    assert "Traceback" not in text
    return code, json.loads(text)


def test_every_parameter_of_every_command_survives_garbage(server, world):
    failures = []
    jobs = []
    for cmd in sorted(API.commands.values(), key=lambda c: c.name):
        for target in cmd.params:
            for junk in GARBAGE:
                params = {"command": cmd.name}
                for p in cmd.params:
                    if p is target:
                        key = f"{p.name}[0].key" if p.type == "map" and junk == "[0].a" else p.name
                        params[key] = junk
                    elif p.required:
                        params[p.name] = world.get(p.entity, "gv") if p.type == "uuid" else \
                            {"boolean": "false", "integer": "1", "long": "1", "short": "1"}.get(p.type, "gv")
                code, body = _call(server, params)
                if code not in ALLOWED:
                    failures.append((cmd.name, target.name, junk[:20], code, body))
                inner = next(iter(body.values()))
                if code == 200 and cmd.is_async and "jobid" in inner:
                    jobs.append((cmd.name, target.name, junk[:20], inner["jobid"]))
    for name, param, junk, jobid in jobs:
        job = wait_job(server, jobid)
        if job["jobresultcode"] not in ALLOWED | {0}:
            failures.append((name, param, junk, job["jobresultcode"], job.get("jobresult")))
    assert not failures, failures[:10]

