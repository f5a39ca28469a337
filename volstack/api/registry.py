"""Each API command is declared exactly once: name, description, parameters, async or not, response.

That declaration drives parameter binding and validation (binding.py), listApis, the generated
docs/api.md and, for async commands, the job that runs the handler.
"""
from contextvars import ContextVar
from dataclasses import dataclass, field
from typing import Callable

# Parameter types as CloudStack names them in listApis.
UUID, STRING, LONG, INTEGER, SHORT, BOOLEAN, MAP, LIST, DATE, TZDATE = (
    "uuid", "string", "long", "integer", "short", "boolean", "map", "list", "date", "tzdate")

# Who may call a command, pass a parameter or see a response field: the least privileged account type allowed.
# OWNER (fields only): the account that owns the row, or the root admin (CloudStack's "Admin or the owner").
ROOT, DOMAIN, USER, OWNER = "root", "domain", "user", "owner"
_ALLOWED = {ROOT: (1,), DOMAIN: (1, 2), USER: (0, 1, 2)}

# The caller a response is rendered for (a CallContext), set by the API app around each request and job. Unset:
# rendered as for a plain user that owns nothing, so a view rendered outside a request never shows too much.
VIEWER: ContextVar = ContextVar("volstack_viewer", default=None)


def role_allows(access: str, account_type: int | None) -> bool:
    return account_type in _ALLOWED[access]


@dataclass(frozen=True)
class Param:
    name: str
    type: str
    description: str
    required: bool = False
    length: int = 255
    entity: str | None = None        # uuid / list of uuid: the entity that must exist
    since: str | None = None
    special: tuple = ()              # values taken as they are (zoneid=-1: every zone)
    access: str = USER               # who may pass it (CloudStack's @Parameter authorized=): ROOT, DOMAIN or USER

    def allowed(self, account_type: int) -> bool:
        return role_allows(self.access, account_type)


@dataclass(frozen=True)
class Field:
    """One field of a response object: its JSON name, description and how to compute it."""
    name: str
    description: str
    get: Callable = None             # get(row, lookups) -> value (None: omitted)
    type: str = "string"
    access: str = USER               # who sees it: USER everyone; ROOT CloudStack's ResponseView.Full; DOMAIN admins;
                                     # OWNER the row's account (row.account_id) or the root admin

    def visible(self, row, viewer) -> bool:
        if self.access == USER:
            return True
        if viewer is None:
            return False
        if self.access == OWNER:
            return viewer.account_type == 1 or getattr(row, "account_id", None) == viewer.account_id
        return role_allows(self.access, viewer.account_type)


@dataclass
class View:
    """How one kind of object is shown: the object key and its fields."""
    key: str
    fields: list[Field]

    def render(self, row, lk, errors: list | None = None, fields=None) -> dict:
        """errors: collect the fields' exceptions there instead of raising (Lookups' gathering pass);
        fields: only these of the view's fields."""
        out, viewer = {}, VIEWER.get()
        for f in self.fields if fields is None else fields:
            if not f.visible(row, viewer):
                continue
            if errors is None:
                v = f.get(row, lk)
            else:
                try:
                    v = f.get(row, lk)
                except Exception as exc:
                    errors.append(exc)
                    continue
            if v is not None:
                out[f.name] = v
        return out


@dataclass
class Command:
    name: str
    description: str
    handler: Callable                 # handler(req, p) -> Obj | Lst | Success | dict
    params: list[Param] = field(default_factory=list)
    is_async: bool = False
    view: View | None = None          # the response object (listApis' response fields)
    response_key: str | None = None   # object key when there is no view (e.g. success)
    access: str = ROOT
    since: str = "3.0.0"
    is_list: bool = False
    related: str = ""
    # async only
    prepare: Callable | None = None   # prepare(req, p) -> uuid of the row created before the job (async create)
    instance_type: str | None = None  # jobinstancetype and the sync key's prefix
    instance_param: str | None = None # the parameter naming the object the job works on
    on_interrupt: str = "fail"        # what reconciliation does if the server dies mid-job: fail | retry
    writes: bool = False              # a get* command that creates something (getUploadParamsFor*)
    sync: Callable | None = None      # sync(req, p, instance) -> (sync key, queue key): what the job waits for
                                      # (default: its instance; a queue key shares a limited number of slots)
    before: Callable | None = None    # before(ms, lower-cased params): runs before the request's transaction
                                      # opens (queryAsyncJobResult's bounded wait for a finishing job)

    def allowed(self, account_type: int) -> bool:
        return role_allows(self.access, account_type)

    @property
    def readonly(self) -> bool:
        """Reads only: list*/query*/get* commands that run in the request."""
        return not self.is_async and not self.writes and self.name.startswith(("list", "query", "get"))

    @property
    def key(self) -> str | None:
        return self.view.key if self.view else self.response_key


# Standard parameters of list commands (BaseListCmd / BaseListDomainResourcesCmd).
LIST_PARAMS = [
    Param("keyword", STRING, "List by keyword"),
    Param("page", INTEGER, "The page number of the result set; must be passed with pagesize"),
    Param("pagesize", INTEGER, "The number of entries per page; -1 lists everything"),
]
OWNER_LIST_PARAMS = [
    Param("listall", BOOLEAN, "If set to false, list only resources belonging to the command's caller; if set to true - list resources that the caller is authorized to see. Default value is false"),
    Param("isrecursive", BOOLEAN, "defaults to false, but if true, lists all resources from the parent specified by the domainId till leaves."),
    Param("account", STRING, "list resources by account. Must be used with the domainId parameter."),
    Param("domainid", UUID, "list only resources belonging to the domain specified", entity="Domain"),
]


@dataclass
class Task:
    """Background work a command starts but does not wait for (e.g. a template download): a job with no
    API command of its own, so it is persisted, serialized per object and reconciled like any other."""
    name: str
    handler: Callable                 # handler(req, params) -> dict, run in the job's session
    instance_type: str | None = None
    on_interrupt: str = "fail"


class Registry:
    def __init__(self):
        self.commands: dict[str, Command] = {}
        self._lower: dict[str, Command] = {}
        self.tasks: dict[str, Task] = {}

    def task(self, name, instance_type=None, on_interrupt="fail"):
        def deco(fn):
            assert name not in self.tasks and name not in self.commands, f"task {name} declared twice"
            self.tasks[name] = Task(name, fn, instance_type, on_interrupt)
            return fn
        return deco

    def add(self, cmd: Command) -> Command:
        assert cmd.name not in self.commands, f"command {cmd.name} declared twice"
        if cmd.is_list:
            have = {p.name for p in cmd.params}
            cmd.params = cmd.params + [p for p in LIST_PARAMS if p.name not in have]
        self.commands[cmd.name] = cmd
        self._lower[cmd.name.lower()] = cmd
        return cmd

    def get(self, name: str) -> Command | None:
        return self.commands.get(name) or self._lower.get(name.lower())

    def command(self, name, description, params=(), **kw):
        """Decorator form: @API.command("listZones", "Lists zones", [...], view=ZONE, is_list=True)."""
        def deco(fn):
            self.add(Command(name=name, description=description, handler=fn, params=list(params), **kw))
            return fn
        return deco


API = Registry()


# Handler results -------------------------------------------------------------------------------

@dataclass
class Obj:
    key: str
    data: dict


@dataclass
class Lst:
    key: str
    items: list
    count: int


@dataclass
class Success:
    displaytext: str | None = None
