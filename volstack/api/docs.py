"""Generate docs/api.md from the command declarations: `python -m volstack.api.docs > docs/api.md`."""
from volstack.api import commands  # noqa: F401
from volstack.api.registry import API


def _cell(text: str) -> str:
    return (text or "").replace("|", "\\|").replace("\n", " ")


def render() -> str:
    cmds = sorted(API.commands.values(), key=lambda c: c.name)
    out = ["# volstack API reference", "",
           "Generated from the command declarations (`python -m volstack.api.docs > docs/api.md`); "
           "a test fails when this file is out of date. Requests and responses follow CloudStack's "
           "conventions: see README and docs/architecture.md.", "",
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
