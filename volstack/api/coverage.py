"""How much of CloudStack's API volstack declares: commands, parameters and response fields, compared with the
names in cloudstack_api.json (facts from CloudStack 4.22's command and response classes). Parameters and fields
marked irrelevant there (VMware, OVM3, GPU, compute, network) are left out of the percentages. Used by
docs/api.md and by tests/test_api_coverage.py, which fails when coverage drops."""
import json
from dataclasses import dataclass
from pathlib import Path

from volstack.api.registry import API, Registry

DATA = Path(__file__).with_name("cloudstack_api.json")


def cloudstack() -> dict:
    return json.loads(DATA.read_text())


@dataclass
class Ratio:
    have: int
    of: int

    @property
    def pct(self) -> float:
        return 100.0 * self.have / self.of if self.of else 100.0

    def __str__(self):
        return f"{self.have}/{self.of}"


def _relevant(names, irrelevant) -> set:
    return set(names) - set(irrelevant or ())


def command_params(name: str, registry: Registry = API, data=None) -> tuple[Ratio | None, list[str]]:
    """(coverage of the command's relevant CloudStack parameters, the missing ones); None when unknown."""
    data = data or cloudstack()
    c = data["commands"].get(name)
    if c is None or c.get("params") is None:
        return None, []
    want = _relevant(c["params"], c.get("irrelevant"))
    cmd = registry.get(name)
    have = {p.name for p in cmd.params} if cmd else set()
    return Ratio(len(want & have), len(want)), sorted(want - have)


def response_fields(cls: str, registry: Registry = API, data=None) -> tuple[Ratio, list[str]]:
    """Coverage of a response class's relevant fields by the fields volstack declares for the commands returning
    it (the union over those commands), and the missing ones."""
    data = data or cloudstack()
    r = data["responses"][cls]
    want = _relevant(r["fields"], r.get("irrelevant"))
    have = set()
    for name, c in data["commands"].items():
        cmd = registry.get(name)
        if c.get("response") == cls and cmd is not None and cmd.view is not None:
            have |= {f.name for f in cmd.view.fields}
    return Ratio(len(want & have), len(want)), sorted(want - have)


def totals(registry: Registry = API, data=None) -> dict[str, Ratio]:
    data = data or cloudstack()
    storage = {n for n, c in data["commands"].items() if not c.get("outside")}
    commands = Ratio(sum(1 for n in storage if registry.get(n)), len(storage))
    ph = po = 0
    for n in data["commands"]:
        if registry.get(n) is None:
            continue
        r, _ = command_params(n, registry, data)
        if r:
            ph, po = ph + r.have, po + r.of
    fh = fo = 0
    for cls in data["responses"]:
        if any(c.get("response") == cls and registry.get(n) for n, c in data["commands"].items()):
            r, _ = response_fields(cls, registry, data)
            fh, fo = fh + r.have, fo + r.of
    return {"commands": commands, "parameters": Ratio(ph, po), "fields": Ratio(fh, fo)}


def unknown_commands(registry: Registry = API, data=None) -> list[str]:
    """volstack commands CloudStack does not have under that name (there should be none)."""
    data = data or cloudstack()
    return sorted(n for n in registry.commands if n not in data["commands"])


def render(registry: Registry = API) -> list[str]:
    """The coverage section of docs/api.md."""
    data = cloudstack()
    t = totals(registry, data)
    out = ["## Coverage of CloudStack's API", "",
           f"Against CloudStack 4.22 (`volstack/api/cloudstack_api.json`), leaving out parameters and fields that do "
           f"not apply to KVM storage: storage commands {t['commands']}, parameters {t['parameters']} "
           f"({t['parameters'].pct:.0f} %), response fields {t['fields']} ({t['fields'].pct:.0f} %) of the response "
           f"types volstack returns.", "",
           "| command | parameters | missing parameters |", "|---|---|---|"]
    for name in sorted(data["commands"]):
        if registry.get(name) is None:
            out.append(f"| {name} | not in volstack | |")
            continue
        r, missing = command_params(name, registry, data)
        out.append(f"| {name} | {r if r else '?'} | {', '.join(missing)} |")
    out += ["", "| response | fields | missing fields |", "|---|---|---|"]
    for cls in sorted(data["responses"]):
        if not any(c.get("response") == cls and registry.get(n) for n, c in data["commands"].items()):
            continue
        r, missing = response_fields(cls, registry, data)
        out.append(f"| {cls} | {r} | {', '.join(missing)} |")
    return out + [""]
