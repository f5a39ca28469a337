"""The legacy cloudmonkey 5.3.3.1 (Python 2.7) against a live volstack management server.

Every run uses its own config file (-c) and HOME, so nothing outside tmp_path is read or written."""
import configparser
import json
import re

import pytest

from clienttools import CLOUDMONKEY_BIN, client_env, describe, run
from support import client, start_server

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def clean(text: str) -> str:
    """Drop the polling spinner (characters each followed by \\r) and colour codes."""
    return ANSI.sub("", text.split("\r")[-1]).strip()


class Monkey:
    def __init__(self, tmp_path):
        self.dir = tmp_path / "cloudmonkey"
        self.dir.mkdir()
        self.cfg = self.dir / "config"
        self.env = client_env(tmp_path / "home", TERM="dumb")

    def __call__(self, *args, ok=True, input=None):
        proc = run([CLOUDMONKEY_BIN, "-c", self.cfg, *args], env=self.env, timeout=120, input=input)
        if ok is not None:
            assert (proc.returncode == 0) == ok, describe(proc)
        return proc, clean(proc.stdout)

    def json(self, *args):
        proc, out = self(*args)
        assert out, describe(proc)
        return json.loads(out)

    def configure(self, url, **profile):
        """`set` each option, in one interactive session fed on stdin (each `set` rewrites the file)."""
        settings = (("cache_file", self.dir / "cache"), ("history_file", self.dir / "history"),
                    ("log_file", self.dir / "log"), ("display", "json"), ("color", "false"),
                    ("asyncblock", "true"), ("url", url), *profile.items())
        self(input="".join(f"set {key} {value}\n" for key, value in settings))
        cfg = configparser.RawConfigParser()
        cfg.read(self.cfg)
        assert cfg.get("core", "cache_file") == str(self.dir / "cache")
        assert cfg.get("local", "url") == url and cfg.get("ui", "display") == "json"
        return cfg


@pytest.fixture
def monkey(server, tmp_path):
    m = Monkey(tmp_path)
    m.configure(server.endpoint, apikey=server.admin.api_key, secretkey=server.admin_secret)
    return m


def _sync(monkey, ms):
    proc, out = monkey("sync")
    m = re.search(r"(\d+) APIs discovered and cached", out)
    assert m, describe(proc)
    assert int(m.group(1)) == client(ms).listApis()["count"]
    cache = json.loads((monkey.dir / "cache").read_text())
    assert cache["count"] == int(m.group(1))
    return cache


def test_sync_list_and_create(monkey, server, tmp_path):
    cache = _sync(monkey, server)
    assert cache["list"]["zones"]["name"] == "listZones"
    assert cache["delete"]["account"]["isasync"] is True
    assert sorted(cache["create"]["zone"]["requiredparams"]) == ["name", "networktype"]
    assert "disableAccount" in cache["asyncapis"] and "listZones" not in cache["asyncapis"]

    proc, out = monkey("list", "zones")
    assert out == ""                                        # empty list: {"listzonesresponse": {}}
    zone = monkey.json("create", "zone", "name=monkey-zone", "networktype=Advanced", "dns1=1.1.1.1")["zone"]
    assert zone["name"] == "monkey-zone" and zone["networktype"] == "Advanced" and zone["dns1"] == "1.1.1.1"
    listed = monkey.json("list", "zones", "name=monkey-zone")
    assert listed["count"] == 1 and listed["zone"][0]["id"] == zone["id"]
    trimmed = monkey.json("list", "zones", "filter=id,name")
    assert trimmed["zone"] == [{"id": zone["id"], "name": "monkey-zone"}]

    apis = monkey.json("list", "apis", "name=listZones")
    assert apis["count"] == 1 and apis["api"][0]["name"] == "listZones" and apis["api"][0]["isasync"] is False
    everything = monkey.json("list", "apis", "filter=name")
    assert len(everything["api"]) == cache["count"]

    # the raw `api` verb, an update and a delete
    raw = monkey.json("api", "listZones", f"id={zone['id']}")
    assert raw["zone"][0]["name"] == "monkey-zone"
    updated = monkey.json("update", "zone", f"id={zone['id']}", "name=monkey-zone-2")["zone"]
    assert updated["name"] == "monkey-zone-2"
    assert monkey.json("delete", "zone", f"id={zone['id']}") == {"success": True}
    assert client(server).listZones() == {}

    # the cache and log went where `set` put them, not to $HOME/.cloudmonkey (HOME is tmp_path/home anyway)
    assert (monkey.dir / "log").exists()
    assert not (tmp_path / "home" / ".cloudmonkey" / "cache").exists()


def test_required_arguments_follow_our_list_apis(monkey, server):
    _sync(monkey, server)
    proc, out = monkey("create", "zone", "name=no-type")
    assert "Missing arguments: networktype" in out and proc.returncode == 0   # client-side check
    assert client(server).listZones() == {}


def test_api_errors(monkey, server):
    _sync(monkey, server)
    proc, out = monkey("list", "zones", "id=not-a-uuid", ok=False)
    assert "Error 431" in proc.stdout + proc.stderr
    assert json.loads(out)["errorcode"] == 431


@pytest.mark.slow
def test_async_commands_after_sync(monkey, server):
    _sync(monkey, server)
    acc = client(server).createAccount(username="monkey-user", password="Pw-123456", accounttype=0)["account"]

    job = monkey.json("disable", "account", f"id={acc['id']}", "lock=false")
    assert job["jobstatus"] == 1 and job["jobresultcode"] == 0 and job["cmd"] == "disableAccount"
    assert job["jobresult"]["account"]["id"] == acc["id"]
    assert job["jobresult"]["account"]["state"] == "disabled"
    assert client(server).listAccounts(id=acc["id"])["account"][0]["state"] == "disabled"

    job = monkey.json("delete", "account", f"id={acc['id']}")
    assert job["jobstatus"] == 1 and job["jobresult"] == {"success": True}
    assert client(server).listAccounts(name="monkey-user") == {}


# ---------------------------------------------------------------- username/password (session) mode

@pytest.fixture
def pw_server(tmp_path):
    """A server with a known admin password. cloudmonkey sends unsigned requests to any URL that
    contains '8096' (the integration port), so never hand it such a port."""
    started = []
    try:
        for i in range(5):
            ms = start_server(f"sqlite:///{tmp_path / f'pw{i}.db'}", tmp_path, admin_password="pw")
            started.append(ms)
            if "8096" not in ms.endpoint:
                break
        yield started[-1]
    finally:
        for ms in started:
            ms.stop()


def test_username_password_login(pw_server, tmp_path):
    ms = pw_server
    monkey = Monkey(tmp_path)
    cfg = monkey.configure(ms.endpoint, username="admin", password="pw", domain="/")
    assert cfg.get("local", "apikey") == ""

    proc, out = monkey("list", "zones")
    assert out == "", describe(proc)
    _sync(monkey, ms)                                   # listApis through the session too
    zone = monkey.json("create", "zone", "name=session-zone", "networktype=Advanced")["zone"]
    listed = monkey.json("list", "zones", "name=session-zone")
    assert listed["zone"][0]["id"] == zone["id"]

    log = (monkey.dir / "log").read_text()
    assert "command=login" in log and "sessionkey" in log and "apiKey=" not in log

    monkey("set", "password", "wrong")
    proc, _ = monkey("list", "zones", ok=False)
    out = proc.stdout + proc.stderr
    # a failed login is 531 as in CloudStack, which cloudmonkey reports as "Error authenticating"
    assert "Error authenticating" in out, describe(proc)
    assert "session-zone" not in out
