"""`projectid` on every command that takes it in CloudStack. volstack has no projects yet, so every project id is
unknown and refused with 431 as CloudStack refuses an unknown one; the parameter is never accepted and ignored.
Which commands take it is CloudStack's declaration (cloudstack_api.json)."""
from volstack.api.coverage import cloudstack
from volstack.api.registry import API, UUID, Param

PROJECTID = Param("projectid", UUID, "the project of the resource (volstack has no projects yet: every id is refused)",
                  entity="Project")

for _name, _c in cloudstack()["commands"].items():
    _cmd = API.get(_name)
    if _cmd is not None and "projectid" in (_c.get("params") or ()) and all(p.name != "projectid" for p in _cmd.params):
        _cmd.params = _cmd.params + [PROJECTID]
