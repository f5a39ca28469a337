"""Domains, accounts, users, roles, keys, resource limits, login and logout."""
from volstack.api.commands.common import list_query, lst, obj
from volstack.api.registry import (API, DOMAIN, INTEGER, LONG, OWNER_LIST_PARAMS, STRING, USER, UUID, Field as F, Lst,
                                   Obj, Param as P, Success, View)
from volstack.api.views import ACCOUNT, DOMAIN as DOMAIN_VIEW, RESOURCELIMIT, ROLE, USER as USER_VIEW, USERKEYS, Lookups
from volstack.db.models import Account, Domain
from volstack.errors import InvalidParameter
from volstack.services import accounts as svc, limits


def _declare_session_commands():
    def handled_by_server(req, p):       # login/logout never reach a handler: the server answers them
        raise AssertionError("login and logout are handled by the API server itself")
    API.command("login", "Logs a user into the CloudStack. A successful login attempt will generate a JSESSIONID cookie value that can be passed in subsequent Query command calls until the \"logout\" command has been issued or the session has expired.", [
        P("username", STRING, "Username", required=True),
        P("password", STRING, "Hashed password (Default is MD5). If you wish to use any other hashing algorithm, you would need to write a custom authentication adapter See Docs section.", required=True),
        P("domain", STRING, "Path of the domain that the user belongs to. Example: domain=/com/cloud/internal. If no domain is passed in, the ROOT (/) domain is assumed."),
        P("domainid", UUID, "The id of the domain that the user belongs to. If both domain and domainId are passed in, \"domainId\" parameter takes precedence."),
    ], response_key="login", access=USER)(handled_by_server)
    API.command("logout", "Logs out the user", [], response_key="logout", access=USER)(handled_by_server)


_declare_session_commands()

ACCOUNT_TYPE = P("accounttype", INTEGER, "Type of the account. Specify 0 for user, 1 for root admin, and 2 for domain admin")


@API.command("createAccount", "Creates an account", [
    P("username", STRING, "Unique username.", required=True),
    P("password", STRING, "Clear text password (Default hashed to SHA256SALT). If you wish to use any other hashing algorithm, you would need to write a custom authentication adapter See Docs section.", required=True),
    P("email", STRING, "email"),
    P("firstname", STRING, "firstname"),
    P("lastname", STRING, "lastname"),
    P("account", STRING, "Name of the account to be created. The user will be added to this newly created account. If no account is specified, the username will be used as the account name."),
    ACCOUNT_TYPE,
    P("roleid", UUID, "Creates the account under the specified role.", entity="Role"),
    P("domainid", UUID, "Creates the user under the specified domain.", entity="Domain"),
    P("networkdomain", STRING, "Network domain for the account's networks"),
    P("timezone", STRING, "Specifies a timezone for this command. For more information on the timezone parameter, see Time Zone Format."),
    P("accountdetails", "map", "details for account used to store specific parameters (not supported: account "
      "settings are updateConfiguration accountid=…)"),
], view=ACCOUNT, access=DOMAIN)
def create_account(req, p):
    _no_details(p)
    acc = svc.create_account(req.s, req.ctx, username=p.username, password=p.password, email=p.email,
                             firstname=p.firstname, lastname=p.lastname, account=p.account, accounttype=p.accounttype,
                             roleid=p.roleid, domainid=p.domainid, networkdomain=p.networkdomain, timezone=p.timezone)
    return obj(req, ACCOUNT, acc)


@API.command("listAccounts", "Lists accounts and provides detailed account information for listed accounts", [
    P("id", UUID, "list account by account ID", entity="Account"),
    P("name", STRING, "list account by account name"),
    ACCOUNT_TYPE,
    P("state", STRING, "list accounts by state. Valid states are enabled, disabled, and locked."),
    P("details", "list", "comma separated list of account details requested, value can be a list of [ all, resource, min]"),
    *OWNER_LIST_PARAMS], view=ACCOUNT, is_list=True, access=USER)
def list_accounts(req, p):
    return lst(req, ACCOUNT, svc.list_accounts(req.s, req.ctx, list_query(req, p), p.id, p.name, p.accounttype, p.state))


ACCOUNT_REF = [P("id", UUID, "Account id", entity="Account"),
               P("account", STRING, "Account name"),
               P("domainid", UUID, "Domain ID of the account", entity="Domain")]


def _account(req, p) -> Account:
    return svc.get_account(req.s, req.ctx, uuid=p.id, name=p.account, domainid=p.domainid)


@API.command("updateAccount", "Updates account information for the authenticated user", [
    *ACCOUNT_REF,
    P("newname", STRING, "new name for the account"),
    P("networkdomain", STRING, "Network domain for the account's networks; empty string will update domainName with NULL value"),
    P("roleid", UUID, "The UUID of the dynamic role to set for the account", entity="Role"),
    P("accountdetails", "map", "Details for the account used to store specific parameters (not supported: account "
      "settings are updateConfiguration accountid=…)"),
], view=ACCOUNT, access=DOMAIN)
def update_account(req, p):
    _no_details(p)
    return obj(req, ACCOUNT, svc.update_account(req.s, req.ctx, _account(req, p), p.newname, p.networkdomain, p.roleid))


def _no_details(p):
    if p.accountdetails:
        from volstack.errors import InvalidParameter
        raise InvalidParameter("accountdetails are not supported: set account-scoped settings with "
                               "updateConfiguration name=… value=… accountid=…")


@API.command("enableAccount", "Enables an account", ACCOUNT_REF, view=ACCOUNT, access=DOMAIN)
def enable_account(req, p):
    return obj(req, ACCOUNT, svc.set_account_state(req.s, req.ctx, _account(req, p), "enabled"))


@API.command("disableAccount", "Disables an account", [
    *ACCOUNT_REF, P("lock", "boolean", "If true, only lock the account; else disable the account", required=True)],
    view=ACCOUNT, access=DOMAIN, is_async=True, instance_type="Account", instance_param="id", on_interrupt="retry")
def disable_account(req, p):
    return obj(req, ACCOUNT, svc.set_account_state(req.s, req.ctx, _account(req, p), "locked" if p.lock else "disabled"))


@API.command("lockAccount", "This deprecated function used to locks an account. Look for the API DisableAccount instead",
             [P("account", STRING, "Locks the specified account.", required=True),
              P("domainid", UUID, "Locks the specified account on this domain.", required=True, entity="Domain")],
             view=ACCOUNT, access=DOMAIN)
def lock_account(req, p):
    return obj(req, ACCOUNT, svc.set_account_state(req.s, req.ctx, _account(req, p), "locked"))


@API.command("deleteAccount", "Deletes a account, and all users associated with this account",
             [P("id", UUID, "Account id", required=True, entity="Account")], response_key="success",
             access=DOMAIN, is_async=True, instance_type="Account", instance_param="id", on_interrupt="retry")
def delete_account(req, p):
    svc.delete_account(req.s, req.ctx, svc.get_account(req.s, req.ctx, uuid=p.id))
    return Success()


# ---------------------------------------------------------------- domains

@API.command("createDomain", "Creates a domain", [
    P("name", STRING, "creates domain with this name", required=True),
    P("parentdomainid", UUID, "assigns new domain a parent domain by domain ID of the parent.  If no parent domain is specified, the ROOT domain is assumed.", entity="Domain"),
    P("networkdomain", STRING, "Network domain for networks in the domain"),
], view=DOMAIN_VIEW, access=DOMAIN)
def create_domain(req, p):
    return obj(req, DOMAIN_VIEW, svc.create_domain(req.s, req.ctx, p.name, p.parentdomainid, p.networkdomain))


@API.command("listDomains", "Lists domains and provides detailed information for listed domains", [
    P("id", UUID, "List domain by domain ID.", entity="Domain"),
    P("name", STRING, "List domain by domain name."),
    P("level", INTEGER, "List domains by domain level."),
    P("listall", "boolean", "If set to false, list only resources belonging to the command's caller; if set to true - list resources that the caller is authorized to see. Default value is false"),
    P("details", "list", "comma separated list of domain details requested, value can be a list of [ all, resource, min]"),
], view=DOMAIN_VIEW, is_list=True, access=USER)
def list_domains(req, p):
    return lst(req, DOMAIN_VIEW, svc.list_domains(req.s, req.ctx, list_query(req, p), p.id, p.name, p.level))


@API.command("updateDomain", "Updates a domain with a new name", [
    P("id", UUID, "ID of domain to update", required=True, entity="Domain"),
    P("name", STRING, "updates domain with this name"),
    P("networkdomain", STRING, "Network domain for the domain's networks; empty string will update domainName with NULL value"),
], view=DOMAIN_VIEW, access=DOMAIN)
def update_domain(req, p):
    return obj(req, DOMAIN_VIEW, svc.update_domain(req.s, req.ctx, p.id, p.name, p.networkdomain))


@API.command("deleteDomain", "Deletes a specified domain", [
    P("id", UUID, "ID of domain to delete", required=True, entity="Domain"),
    P("cleanup", "boolean", "true if all domain resources (child domains, accounts) have to be cleaned up, false otherwise"),
], response_key="success", access=DOMAIN, is_async=True, instance_type="Domain", instance_param="id", on_interrupt="retry")
def delete_domain(req, p):
    svc.delete_domain(req.s, req.ctx, p.id, bool(p.cleanup))
    return Success()


# ---------------------------------------------------------------- users and keys

@API.command("createUser", "Creates a user for an account that already exists", [
    P("account", STRING, "Creates the user under the specified account. If no account is specified, the username will be used as the account name.", required=True),
    P("username", STRING, "Unique username.", required=True),
    P("password", STRING, "Clear text password (Default hashed to SHA256SALT).", required=True),
    P("email", STRING, "email"), P("firstname", STRING, "firstname"), P("lastname", STRING, "lastname"),
    P("domainid", UUID, "Creates the user under the specified domain. Has to be accompanied with the account parameter", entity="Domain"),
    P("timezone", STRING, "Specifies a timezone for this command."),
], view=USER_VIEW, access=DOMAIN)
def create_user(req, p):
    user = svc.create_user(req.s, req.ctx, account=p.account, username=p.username, password=p.password, email=p.email,
                           firstname=p.firstname, lastname=p.lastname, domainid=p.domainid, timezone=p.timezone)
    return obj(req, USER_VIEW, user)


USER_REF = [P("id", UUID, "the ID of the user", required=True, entity="User")]


@API.command("enableUser", "Enables a user account (also one disabled by too many failed logins)", USER_REF,
             view=USER_VIEW, access=DOMAIN)
def enable_user(req, p):
    return obj(req, USER_VIEW, svc.set_user_state(req.s, req.ctx, svc.get_user(req.s, req.ctx, p.id), "enabled"))


@API.command("disableUser", "Disables a user account", USER_REF, view=USER_VIEW, access=DOMAIN, is_async=True,
             instance_type="User", instance_param="id", on_interrupt="retry")
def disable_user(req, p):
    return obj(req, USER_VIEW, svc.set_user_state(req.s, req.ctx, svc.get_user(req.s, req.ctx, p.id), "disabled"))


@API.command("lockUser", "Locks a user account", USER_REF, view=USER_VIEW, access=DOMAIN)
def lock_user(req, p):
    return obj(req, USER_VIEW, svc.set_user_state(req.s, req.ctx, svc.get_user(req.s, req.ctx, p.id), "locked"))


@API.command("listUsers", "Lists user accounts", [
    P("id", UUID, "List user by ID.", entity="User"),
    P("username", STRING, "List user by the username"),
    P("state", STRING, "List users by state of the user account."),
    P("accounttype", INTEGER, "List users by account type."),
    *OWNER_LIST_PARAMS], view=USER_VIEW, is_list=True, access=USER)
def list_users(req, p):
    return lst(req, USER_VIEW, svc.list_users(req.s, req.ctx, list_query(req, p), p.id, p.username, p.state,
                                                       accounttype=p.accounttype))


@API.command("updateUser", "Updates a user account", [
    P("id", UUID, "User uuid", required=True, entity="User"),
    P("username", STRING, "Unique username"), P("password", STRING, "Clear text password"),
    P("currentpassword", STRING, "Current password that was being used by the user. You must inform the current password when updating the password."),
    P("email", STRING, "email"), P("firstname", STRING, "first name"), P("lastname", STRING, "last name"),
    P("timezone", STRING, "Specifies a timezone for this command."),
], view=USER_VIEW, access=USER)
def update_user(req, p):
    user = svc.get_user(req.s, req.ctx, p.id)
    return obj(req, USER_VIEW, svc.update_user(req.s, req.ctx, user, **{k: v for k, v in p.items() if k != "id"}))


@API.command("deleteUser", "Deletes a user for an account", [P("id", UUID, "id of the user to be deleted", required=True, entity="User")],
             response_key="success", access=DOMAIN)
def delete_user(req, p):
    svc.delete_user(req.s, req.ctx, svc.get_user(req.s, req.ctx, p.id))
    return Success()


@API.command("registerUserKeys", "This command allows a user to register for the developer API, returning a secret key and an API key. This request is made through the integration API port, so it is a privileged command and must be made on behalf of a user. It is up to the implementer just how the username and password are entered, and then how that translates to an integration API request. Both secret key and API key should be returned to the user",
             [P("id", UUID, "User id", required=True, entity="User")], view=USERKEYS, access=USER)
def register_user_keys(req, p):
    keys = svc.register_user_keys(req.s, req.ctx, svc.get_user(req.s, req.ctx, p.id))
    return Obj("userkeys", USERKEYS.render(keys, None))


@API.command("getUserKeys", "This command allows the user to query the seceret and API keys for the account",
             [P("id", UUID, "ID of the user whose keys are required", required=True, entity="User")], view=USERKEYS, access=USER)
def get_user_keys(req, p):
    user = svc.get_user(req.s, req.ctx, p.id)
    return Obj("userkeys", USERKEYS.render((user.api_key, svc.user_secret(user)), None))


@API.command("listRoles", "Lists dynamic roles in CloudStack", [
    P("id", UUID, "List role by role ID.", entity="Role"), P("name", STRING, "List role by role name."),
    P("type", STRING, "List role by role type, valid options are: Admin, ResourceAdmin, DomainAdmin, User.")],
    view=ROLE, is_list=True, access=DOMAIN)
def list_roles(req, p):
    return lst(req, ROLE, svc.list_roles(req.s, req.ctx, list_query(req, p), p.id, p.name, p.type))


# ---------------------------------------------------------------- resource limits

def _limit_type(value) -> str:
    if value is None:
        return None
    try:
        return limits.LIMIT_BY_NUMBER[int(value)]
    except (ValueError, KeyError):
        if str(value) in limits.LIMIT_TYPES:
            return str(value)
    raise InvalidParameter(f"Invalid resource type {value}: volstack limits "
                           + ", ".join(f"{n} ({name})" for name, (n, _) in limits.LIMIT_TYPES.items()))


def _limit_row(req, acc, rtype, limit=None):
    dom = req.s.get(Domain, acc.domain_id)
    return {"account": acc.name, "domainid": dom.uuid, "domain": dom.name, "type": limits.LIMIT_TYPES[rtype][0],
            "typename": rtype, "max": limits.limit_of(req.s, acc.id, rtype) if limit is None else limit}


@API.command("listResourceLimits", "Lists resource limits.", [
    P("id", LONG, "Lists resource limits by ID."),
    P("resourcetype", INTEGER, "Type of resource: 2 volume, 3 snapshot, 4 template, 10 primary storage (GiB), 11 secondary storage (GiB)"),
    P("resourcetypename", STRING, "Type of resource by name: volume, snapshot, template, primary_storage, secondary_storage"),
    *OWNER_LIST_PARAMS], view=RESOURCELIMIT, is_list=True, access=USER)
def list_resource_limits(req, p):
    q = list_query(req, p)
    acc = svc.get_account(req.s, req.ctx, name=q.account, domainid=q.domainid) if q.account \
        else req.s.get(Account, req.ctx.account_id)
    rtype = _limit_type(p.resourcetype if p.resourcetype is not None else p.resourcetypename)
    types = [rtype] if rtype else list(limits.LIMIT_TYPES)
    lk = Lookups(req.s)
    maxes = limits.limits_of(req.s, acc)          # every type in one query, not one per type
    items = [RESOURCELIMIT.render(_limit_row(req, acc, t, maxes[t]), lk) for t in types]
    return Lst(RESOURCELIMIT.key, items, len(items))


@API.command("updateResourceLimit", "Updates resource limits for an account or domain.", [
    P("resourcetype", INTEGER, "Type of resource to update: 2 volume, 3 snapshot, 4 template, 10 primary storage (GiB), 11 secondary storage (GiB)", required=True),
    P("max", LONG, "Maximum resource limit."),
    P("account", STRING, "Update resource for a specified account. Must be used with the domainId parameter."),
    P("domainid", UUID, "Update resource limits for all accounts in specified domain.", entity="Domain"),
], view=RESOURCELIMIT, access=DOMAIN)
def update_resource_limit(req, p):
    if not p.account:
        raise InvalidParameter("volstack keeps resource limits per account: pass account (and domainid)")
    acc = svc.get_account(req.s, req.ctx, name=p.account, domainid=p.domainid)
    rtype = _limit_type(p.resourcetype)
    limits.update_resource_limit(req.s, req.ctx, acc, rtype, -1 if p.max is None else p.max)
    return Obj(RESOURCELIMIT.key, RESOURCELIMIT.render(_limit_row(req, acc, rtype), None))


RESOURCECOUNT = View("resourcecount", [
    F("account", "the account for which resource count's are updated", lambda r, lk: r["account"]),
    F("domainid", "the domain ID for which resource count's are updated", lambda r, lk: r["domainid"]),
    F("domain", "the domain name for which resource count's are updated", lambda r, lk: r["domain"]),
    F("resourcetype", "resource type. Values include 2, 3, 4, 10, 11.", lambda r, lk: str(r["type"])),
    F("resourcetypename", "resource type name", lambda r, lk: r["typename"]),
    F("resourcecount", "resource count (bytes for primary and secondary storage)", lambda r, lk: r["count"], "long"),
])


@API.command("updateResourceCount", "Recalculate and update resource count for an account or domain. volstack keeps "
             "each count current in the transaction of every change; this recounts them from the objects themselves "
             "(and, for the root administrator on the ROOT domain, each storage pool's allocated bytes).", [
    P("domainid", UUID, "If account parameter specified then updates resource counts for a specified account in this "
      "domain else update resource counts for all accounts & child domains in specified domain.", required=True,
      entity="Domain"),
    P("account", STRING, "Update resource count for a specified account. Must be used with the domainId parameter."),
    P("resourcetype", INTEGER, "Type of resource to update: 2 volume, 3 snapshot, 4 template, 10 primary storage, "
      "11 secondary storage. If not specified will update all resource counts"),
], view=RESOURCECOUNT, is_list=True, access=DOMAIN)
def update_resource_count(req, p):
    rows = svc.update_resource_count(req.s, req.ctx, p.domainid, p.account, _limit_type(p.resourcetype))
    return Lst(RESOURCECOUNT.key, Lookups(req.s).render_all(RESOURCECOUNT, rows), len(rows))
