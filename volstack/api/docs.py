"""Generate docs/api.md from the command declarations: `python -m volstack.api.docs > docs/api.md`."""
from volstack.api import commands, coverage  # noqa: F401
from volstack.api.registry import API


# Where volstack answers differently from CloudStack 4.22 on purpose (the why is in docs/architecture.md).
DEPARTURES = [
    "createTags with a key the resource already has answers 431 naming the key and its value (CloudStack: 530 "
    "from a database constraint). deleteTags that matches no tag answers 431 saying what was asked (CloudStack: "
    "530 \"Failed to delete tags\").",
    "Resources are named by uuid in createTags/deleteTags/addResourceDetail (CloudStack also takes internal ids, "
    "which volstack never shows).",
    "Storage pools take resource details (resourcetype=Storage) but no tags, as in CloudStack's "
    "ResourceObjectType table; zones likewise (their `tags` is always []).",
    "`tags[i].key/value` filters select the resources carrying any of the pairs, keys and values compared "
    "ignoring case, as CloudStack does on MySQL; a pair nobody carries selects nothing.",
    "Name filters of list commands ignore case (CloudStack's do through MySQL's collation).",
    "registerIso takes zoneids (with -1 for every zone) like registerTemplate.",
    "listStorageTags' poolid is the pool's uuid (CloudStack shows its internal id there, which volstack never "
    "shows).",
    "volstack has no projects yet: `projectid` is declared where CloudStack declares it and every value is refused "
    "with 431 (an unknown project in CloudStack), never ignored.",
    "accountdetails (createAccount/updateAccount) is refused with 431: account-scoped settings are "
    "updateConfiguration accountid=.",
    "removeGuestOs refuses a guest OS that templates or ISOs still use (536); CloudStack removes it from under them.",
    "Simulator hosts whose URL names a host starting with `sim` are named SimulatedAgent.<uuid> with addresses from "
    "the pod's range, as CloudStack's simulator does; other Simulator URLs keep their host name (volstack's tests "
    "and Ansible's cs_host find hosts by name).",
    "Flags volstack cannot honour are refused with 431 naming them, never ignored: quiescevm=true (createSnapshot, "
    "createVMSnapshot: no QEMU guest agent is driven), usestoragereplication=true (createSnapshotPolicy), "
    "showcapacities=true (listZones, listPods, listClusters: no capacity figures at those levels).",
]


def _cell(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def render() -> str:
    cmds = sorted(API.commands.values(), key=lambda c: c.name)
    out = ["# volstack API reference", "",
           "Generated from the command declarations (`python -m volstack.api.docs > docs/api.md`); "
           "a test fails when this file is out of date. Requests and responses follow CloudStack's "
           "conventions: see README and docs/architecture.md.", "",
           "## Departures from CloudStack", "", *[f"- {d}" for d in DEPARTURES], "",
           *coverage.render(), "## Commands", "",
           "| command | async | who | response |", "|---|---|---|---|"]
    for c in cmds:
        out.append(f"| [{c.name}](#{c.name.lower()}) | {'yes' if c.is_async else 'no'} | {c.access} | "
                   f"{c.key or ''}{' (list)' if c.is_list else ''} |")
    for c in cmds:
        out += ["", f"## {c.name}", "", _cell(c.description), "",
                f"Async: {'yes (returns jobid; the result is in queryAsyncJobResult)' if c.is_async else 'no'}. "
                f"Callers: {c.access}. Since {c.since}.", ""]
        if c.params:
            out += ["| parameter | type | required | description |", "|---|---|---|---|"]
            for p in c.params:
                length = f" (≤{p.length})" if p.type == "string" and p.length != 255 else ""
                who = "" if p.access == "user" else f" (callers: {p.access})"
                out.append(f"| {p.name} | {p.type}{length} | {'yes' if p.required else ''} | {_cell(p.description)}{who} |")
            out.append("")
        fields = c.view.fields if c.view else []
        if fields:
            out += [f"Response `{c.key}`: " + ", ".join(f"`{f.name}`" + ("" if f.access == "user" else f" ({f.access})")
                                                       for f in fields), ""]
    return "\n".join(out).rstrip() + "\n"


if __name__ == "__main__":
    print(render(), end="")
