"""examples/datacenter.yaml applies as docs/apply.md says: the second run changes nothing; docs/apply.md names
every key the file format accepts; a key the format does not know is refused, not ignored."""
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from volstack.services import datacenter, offerings, service_offerings

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "datacenter.yaml"
VOLSTACK = str(Path(sys.executable).with_name("volstack"))


def _apply(path, db_url, key):
    return subprocess.run([VOLSTACK, "apply", str(path), "--db", db_url, "--key-file", str(key)],
                          capture_output=True, text=True, timeout=120)


def test_the_example_applies_and_a_second_run_changes_nothing(db_url, tmp_path):
    first = _apply(EXAMPLE, db_url, tmp_path / "k")
    assert first.returncode == 0, first.stderr
    lines = first.stdout.splitlines()
    doc = yaml.safe_load(EXAMPLE.read_text())
    for what, items in [("zone", doc["zones"]), ("disk offering", doc["disk_offerings"]),
                        ("service offering", doc["service_offerings"]), ("storage pool", doc["storage_pools"]),
                        ("image store", doc["image_stores"]), ("account", doc["accounts"])]:
        for item in items:
            assert f"created {what} {item['name']}" in lines, (what, item["name"], lines)
    # the zone-scoped value names a zone the same file creates
    assert "updated setting pool.storage.capacity.disablethreshold = 0.9" in lines
    assert "created host sim-2" in lines and "updated limit primary_storage of account team" in lines
    second = _apply(EXAMPLE, db_url, tmp_path / "k")
    assert second.returncode == 0, second.stderr
    assert len(second.stdout.splitlines()) == len([ln for ln in lines if not ln.startswith("updated limit")])
    assert all(ln.startswith("unchanged ") for ln in second.stdout.splitlines()), second.stdout


def test_every_key_of_the_format_is_in_the_reference():
    doc = (ROOT / "docs" / "apply.md").read_text()
    keys = (datacenter.ZONE_KEYS | datacenter.POD_KEYS | datacenter.CLUSTER_KEYS | datacenter.HOST_KEYS
            | datacenter.ACCOUNT_KEYS | datacenter.SETTING_KEYS | datacenter.POOL_KEYS | datacenter.STORE_KEYS
            | datacenter.TEMPLATE_KEYS | datacenter._params(offerings.create_disk_offering)
            | datacenter._params(service_offerings.create_service_offering) | set(offerings.RATES))
    assert sorted(k for k in keys if f"`{k}`" not in doc) == []
    assert sorted(s for s in datacenter._sections if f"## `{s}`" not in doc) == []


def test_a_key_the_format_does_not_know_is_refused_with_the_keys_it_knows(tmp_path):
    from volstack import crypto
    from volstack.api import commands  # noqa: F401  (registers the settings' scopes and services)
    from volstack.db.engine import Database
    from volstack.errors import InvalidParameter
    from volstack.services import accounts
    from volstack.services.context import system_context
    crypto.load_key(tmp_path / "k")
    db = Database(f"sqlite:///{tmp_path / 'v.db'}")
    db.upgrade()
    with db.session() as s:
        accounts.bootstrap(s)

    def refused(doc) -> str:
        with pytest.raises(InvalidParameter) as e:
            datacenter.apply(db, system_context(), doc)
        assert e.value.errorcode == 431
        return e.value.text
    assert refused({"zones": [{"name": "z", "dsn1": "10.0.0.53"}]}).startswith(
        "zones[0]: unknown key(s) dsn1; allowed: allocationstate, description, dns1")
    assert refused({"disk_offerings": [{"name": "d", "size": 5}]}).startswith("disk_offerings[0]: unknown key(s) size")
    assert refused({"zones": [{"name": "z", "pods": [{"name": "p", "clusters": [{"name": "c", "hosts": [
        {"hosttags": "x"}]}]}]}]}) == "cluster c: hosts[0]: url is required"
    assert refused({"zones": [{"name": "z"}], "settings": [
        {"name": "storage.overprovisioning.factor", "value": 2, "zone": "z"}]}) == (
        "Setting storage.overprovisioning.factor cannot be set for a zone; it can be set at: storagepool, global")
    with db.session() as s:      # each refused file left nothing behind
        from volstack.db.models import Zone
        assert s.query(Zone).count() == 0


def test_values_are_typed_as_the_api_types_them(tmp_path):
    """YAML gives "5" for a quoted number: it is the integer 5, as in the API; a non-number is refused with
    the API's message (it was a traceback)."""
    f = tmp_path / "dc.yaml"
    db = f"sqlite:///{tmp_path / 'v.db'}"
    f.write_text('disk_offerings:\n- {name: five, disksize: "5", customized: "false"}\n')
    r = _apply(f, db, tmp_path / "k")
    assert r.returncode == 0 and r.stdout == "created disk offering five\n", r.stderr
    f.write_text('disk_offerings:\n- {name: bad, disksize: five}\n')
    r = _apply(f, db, tmp_path / "k")
    assert r.returncode == 1 and r.stderr == ("volstack apply: Unable to execute API command creatediskoffering due to "
                                              "invalid value 'five' for parameter disksize: expected an integer\n")
