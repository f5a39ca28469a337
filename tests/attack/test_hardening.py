"""Hole 7 (the part that is not about images): malformed input answered with a clear error, never a 530, and
settings validated against their type and range when they are set."""
from datetime import datetime, timedelta, timezone
from urllib.parse import urlencode

import pytest
import requests


from attackkit import error_of


def _signed_query(stack, tenant, signature: str) -> str:
    p = {"command": "listZones", "response": "json", "apiKey": tenant.key, "signatureVersion": "3",
         "expires": (datetime.now(timezone.utc) + timedelta(minutes=5)).strftime("%Y-%m-%dT%H:%M:%S%z")}
    p["signature"] = signature
    return f"{stack.endpoint}?{urlencode(p)}"


def test_a_non_ascii_signature_is_a_401_not_a_530(stack, tenants):
    before = stack.log_path.read_text(errors="replace").count("Traceback")
    resp = requests.get(_signed_query(stack, tenants.alice, "ä" * 28), timeout=30)
    assert resp.status_code == 401 and "unable to verify user credentials" in resp.text, resp.text
    assert stack.log_path.read_text(errors="replace").count("Traceback") == before


@pytest.mark.parametrize("name,value,expect", [
    ("session.timeout", "99999999999999999999", "must be between 1 and 2147483647"),
    ("session.timeout", "0", "must be between 1 and 2147483647"),
    ("secstorage.allowed.internal.sites", "not-a-cidr", "must be a comma-separated list of CIDRs"),
    ("secstorage.allowed.internal.sites", "10.0.0.0/8,300.1.1.1/32", "'300.1.1.1/32' is not one"),
    ("pool.storage.capacity.disablethreshold", "1.5", "must be between 0.0 and 1.0"),
    ("storage.overprovisioning.factor", "nan", "must be a finite number"),
    ("max.account.volumes", "-2", "must be between -1 and"),
    ("default.page.size", "-5", "must be between 1 and"),
    ("volume.allocation.algorithm", "fastest", "must be one of random, firstfit"),
    ("json.content.type", "text/plain\r\nSet-Cookie: x=1", "must not contain control characters"),
    ("incorrect.login.attempts.allowed", "0", "must be between 1 and"),
])
def test_every_setting_is_checked_against_its_type_and_range(stack, name, value, expect):
    before = stack.root.listConfigurations(name=name)["configuration"][0]["value"]
    code, text = error_of(stack.call(stack.root, "updateConfiguration", name=name, value=value))
    assert code == 431 and expect in text, (code, text)
    assert stack.root.listConfigurations(name=name)["configuration"][0]["value"] == before


def test_sessions_keep_working_after_a_refused_timeout(stack, tenants):
    stack.call(stack.root, "updateConfiguration", name="session.timeout", value="99999999999999999999")
    resp = stack.login("alice", tenants.alice.password, tenants.alice.domain_path)
    assert resp.status_code == 200, resp.text
    key = resp.json()["loginresponse"]["sessionkey"]
    listed = requests.get(stack.endpoint, params={"command": "listZones", "response": "json", "sessionkey": key},
                          cookies={"sessionkey": key}, timeout=30)
    assert listed.status_code == 200, listed.text
