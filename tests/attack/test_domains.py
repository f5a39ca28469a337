"""Hole 2: a domain admin renamed its domain onto a sibling's name; paths collided and, since every access check
compared path prefixes, it listed and destroyed the sibling's volumes. Names are unique among siblings now and
access is decided by domain ids."""
import sqlite3

from attackkit import error_of, offering, zone_id


def _victim_setup(stack, tenants, tag):
    root = stack.root
    mine = root.createDomain(name=f"{tag}-a")["domain"]
    theirs = root.createDomain(name=f"{tag}-b")["domain"]
    tenants.domains[mine["name"]], tenants.domains[theirs["name"]] = mine, theirs
    dadmin = tenants.make(f"{tag}-admin", mine["name"], accounttype=2)
    victim = tenants.make(f"{tag}-victim", theirs["name"])
    vol = victim.api.createVolume(name=f"{tag}-data", zoneid=zone_id(stack),
                                  diskofferingid=offering(stack, "disk", "Custom"), size=1)["volume"]
    return mine, theirs, dadmin, victim, vol


def _cannot_reach(stack, dadmin, vol):
    seen = dadmin.api.listVolumes(listall=True).get("volume", [])
    assert vol["id"] not in {v["id"] for v in seen}
    code, text = error_of(stack.call(dadmin, "deleteVolume", id=vol["id"]))
    assert code == 531 and "does not have permission" in text, (code, text)
    assert stack.root.listVolumes(id=vol["id"], listall=True)["volume"][0]["state"] != "Destroy"


def test_a_domain_admin_cannot_rename_its_domain_onto_a_sibling(stack, tenants):
    mine, theirs, dadmin, victim, vol = _victim_setup(stack, tenants, "hx2")
    for name in (theirs["name"], theirs["name"].upper()):
        code, text = error_of(stack.call(dadmin, "updateDomain", id=mine["id"], name=name))
        assert code == 431 and f"Domain with name {name} already exists" in text, (code, text)
    assert stack.root.listDomains(id=mine["id"], listall=True)["domain"][0]["name"] == mine["name"]
    _cannot_reach(stack, dadmin, vol)


def test_access_is_decided_by_domain_ids_even_when_paths_collide(stack, tenants):
    """A database written before the fix may already hold two domains with one path: that grants nothing."""
    mine, theirs, dadmin, victim, vol = _victim_setup(stack, tenants, "hx2p")
    db = sqlite3.connect(stack.data / "volstack.db", timeout=30)
    with db:
        db.execute("UPDATE domain SET path = ? WHERE uuid = ?", (f"/{theirs['name']}/", mine["id"]))
    db.close()
    _cannot_reach(stack, dadmin, vol)
    assert victim.account["id"] not in {a["id"] for a in dadmin.api.listAccounts(listall=True)["account"]}
    code, text = error_of(stack.call(dadmin, "listVolumes", domainid=theirs["id"]))
    assert code == 531 and "does not have permission to access domain" in text, (code, text)


def test_a_domain_name_with_a_slash_is_refused(stack):
    """'hx2-a/sub' under ROOT would have had the path of a child of hx2-a."""
    code, text = error_of(stack.call(stack.root, "createDomain", name="attack-d1/sub"))
    assert code == 431 and "has no '/'" in text, (code, text)
