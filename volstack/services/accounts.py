"""Domains, accounts, users, roles, API keys (password logins: logins.py; resource limits: limits.py)."""
import secrets
import time

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError
from sqlalchemy import delete, event, func, select
from sqlalchemy.orm import Session as Session_

from volstack import crypto
from volstack.db.models import Account, Domain, ResourceLimit, Role, Session, User
from volstack.errors import InvalidParameter, PermissionDenied, ResourceInUse
from volstack.services import events, limits, pools
from volstack.services.context import (DOMAIN_ADMIN, ROOT_ADMIN, USER, CallContext, can_access_domain,
                                       check_access, subtree_ids)
from volstack.services.listing import ListQuery, keyword_filter, paginate

_hasher = PasswordHasher()
BUILTIN_ROLES = (("Root Admin", "Admin", "Default root admin role"),
                 ("Domain Admin", "DomainAdmin", "Default domain admin role"),
                 ("User", "User", "Default user role"))
TYPE_OF_ROLE = {"Admin": ROOT_ADMIN, "DomainAdmin": DOMAIN_ADMIN, "User": USER}

def hash_password(password: str) -> str:
    return _hasher.hash(password)


def new_keys() -> tuple[str, str]:
    return secrets.token_urlsafe(64), secrets.token_urlsafe(64)


# ---------------------------------------------------------------- bootstrap

def bootstrap(s, admin_password: str | None = None) -> User:
    """Create ROOT, the built-in roles, the system and admin accounts once; return the admin user."""
    if s.get(Domain, 1) is None:
        # Inserted in order without explicit ids so that database sequences stay right; the
        # well-known ids (domain 1, system account/user 1, admin account/user 2) follow from it.
        s.add(Domain(name="ROOT", path="/", level=0))
        for name, rtype, desc in BUILTIN_ROLES:
            s.add(Role(name=name, role_type=rtype, description=desc))
        s.flush()
        admin_role = s.scalar(select(Role).where(Role.role_type == "Admin"))
        system = Account(name="system", account_type=ROOT_ADMIN, role_id=admin_role.id, domain_id=1)
        s.add(system)
        s.flush()
        admin_acc = Account(name="admin", account_type=ROOT_ADMIN, role_id=admin_role.id, domain_id=1)
        s.add(admin_acc)
        s.flush()
        s.add(User(username="system", account_id=system.id, firstname="system", lastname="cloud"))
        s.flush()
        s.add(User(username="admin", account_id=admin_acc.id, firstname="Admin", lastname="User",
                   password=hash_password(admin_password or secrets.token_urlsafe(16))))
        s.flush()
        assert (system.id, admin_acc.id) == (1, 2), "bootstrap must run on an empty database"
    admin = s.get(User, 2)
    if admin_password is not None and not verify_password(admin, admin_password):
        admin.password = hash_password(admin_password)
    if admin.api_key is None:
        admin.api_key, secret = new_keys()
        admin.secret_key = crypto.encrypt(secret)
    return admin


def verify_password(user: User, password: str) -> bool:
    if not user.password:
        return False
    try:
        return _hasher.verify(user.password, password)
    except (VerificationError, InvalidHashError):
        return False


def user_secret(user: User) -> str | None:
    return crypto.decrypt(user.secret_key) if user.secret_key else None


# ---------------------------------------------------------------- identity

def context_for(s, user: User, job_uuid=None) -> CallContext:
    acc = s.get(Account, user.account_id)
    dom = s.get(Domain, acc.domain_id)
    return CallContext(user_id=user.id, account_id=acc.id, domain_id=dom.id, domain_path=dom.path,
                       account_type=acc.account_type, user_uuid=user.uuid, account_name=acc.name, job_uuid=job_uuid)


def _usable(s, user: User | None) -> bool:
    if user is None or user.state != "enabled":
        return False
    acc = s.get(Account, user.account_id)
    return acc is not None and acc.state == "enabled"


def user_by_api_key(s, api_key: str) -> User | None:
    user = s.scalar(select(User).where(User.api_key == api_key))
    return user if _usable(s, user) else None


# API keys are looked up on every signed request. The identity (context, decrypted secret) is kept for a few
# seconds; any change to a user, account or domain row clears the cache on flush and again after its commit
# (so a request racing the change cannot keep the old identity). Another management server's cache sees a
# disabled or deleted key within KEY_CACHE_SECONDS.
KEY_CACHE_SECONDS = 5.0
_key_cache: dict = {}        # api key -> (expiry (monotonic), CallContext, secret)


def identity_by_api_key(s, api_key: str):
    """(CallContext, secret) of the usable user holding api_key, or None."""
    hit = _key_cache.get(api_key)
    now = time.monotonic()
    if hit is not None and hit[0] > now:
        return hit[1], hit[2]
    user = user_by_api_key(s, api_key)
    if user is None or not user.secret_key:
        return None                      # misses are not kept: a stream of wrong keys cannot fill memory
    ident = (context_for(s, user), user_secret(user))
    if len(_key_cache) > 10000:
        _key_cache.clear()
    _key_cache[api_key] = (now + KEY_CACHE_SECONDS, *ident)
    return ident


@event.listens_for(Session_, "after_flush")
def _identity_changed(session, _ctx) -> None:
    if any(isinstance(o, (User, Account, Domain)) for o in (*session.new, *session.dirty, *session.deleted)):
        _key_cache.clear()
        session.info["identity_changed"] = True


@event.listens_for(Session_, "after_commit")
def _identity_committed(session) -> None:
    if session.info.pop("identity_changed", False):
        _key_cache.clear()


# ---------------------------------------------------------------- domains

def get_domain(s, ctx, uuid: str) -> Domain:
    dom = s.scalar(select(Domain).where(Domain.uuid == uuid))
    if dom is None:
        raise InvalidParameter(f"Unable to find domain by id {uuid}")
    if not can_access_domain(s, ctx, dom):
        raise PermissionDenied(f"Account {ctx.account_name} does not have permission to access domain {dom.name}")
    return dom


def create_domain(s, ctx, name: str, parentdomainid: str | None = None, networkdomain: str | None = None) -> Domain:
    if not ctx.is_admin:
        raise PermissionDenied("Only administrators can create domains")
    parent = get_domain(s, ctx, parentdomainid) if parentdomainid else s.get(Domain, ctx.domain_id)
    _check_domain_name(s, parent, name)
    dom = Domain(name=name, parent_id=parent.id, path=parent.path + name + "/", level=parent.level + 1,
                 network_domain=networkdomain)
    s.add(dom)
    s.flush()
    events.record(s, ctx, "DOMAIN.CREATE", f"Domain {name} created", resource_type="Domain", resource_uuid=dom.uuid)
    return dom


def _check_domain_name(s, parent: Domain, name: str, renaming: Domain | None = None) -> None:
    """Names are unique among siblings (case-insensitively, as CloudStack) and hold no '/', so that no two domains
    ever share a path (login and domainpath name a domain by it)."""
    if "/" in name or not name.strip():
        raise InvalidParameter(f"Invalid domain name {name!r}: a domain name is not empty and has no '/'")
    clash = s.scalar(select(Domain).where(Domain.parent_id == parent.id, func.lower(Domain.name) == name.lower(),
                                          *([Domain.id != renaming.id] if renaming else [])))
    if clash is not None:
        raise InvalidParameter(f"Domain with name {name} already exists for the parent id={parent.uuid}")


def list_domains(s, ctx, q: ListQuery, id=None, name=None, level=None):
    stmt = select(Domain).order_by(Domain.id)
    base = s.get(Domain, ctx.domain_id)
    if ctx.is_admin and (q.listall or q.isrecursive or id or name or level is not None):
        stmt = stmt.where(Domain.id.in_(subtree_ids(base.id)))
    else:
        stmt = stmt.where(Domain.id == base.id)
    if id:
        stmt = stmt.where(Domain.uuid == id)
    if name:
        stmt = stmt.where(func.lower(Domain.name) == name.lower())
    if level is not None:
        stmt = stmt.where(Domain.level == level)
    stmt = stmt.where(*keyword_filter(q, Domain.name))
    return paginate(s, stmt, q)


def update_domain(s, ctx, id: str, name=None, networkdomain=None) -> Domain:
    dom = get_domain(s, ctx, id)
    if dom.id == 1 and name and name != dom.name:
        raise InvalidParameter("The ROOT domain cannot be renamed")
    if name and name != dom.name:
        _check_domain_name(s, s.get(Domain, dom.parent_id), name, renaming=dom)
        old = dom.path
        dom.name = name
        dom.path = old[: -len(old.rstrip("/").split("/")[-1]) - 1] + name + "/"
        for sub in s.scalars(select(Domain).where(Domain.id.in_(subtree_ids(dom.id)), Domain.id != dom.id)):
            sub.path = dom.path + sub.path[len(old):]
    if networkdomain is not None:
        dom.network_domain = networkdomain
    events.record(s, ctx, "DOMAIN.UPDATE", f"Domain {dom.name} updated", resource_type="Domain", resource_uuid=dom.uuid)
    return dom


def delete_domain(s, ctx, id: str, cleanup: bool = False) -> None:
    dom = get_domain(s, ctx, id)
    if dom.id == 1:
        raise PermissionDenied("The ROOT domain cannot be deleted")
    subs = list(s.scalars(select(Domain).where(Domain.id.in_(subtree_ids(dom.id))).order_by(Domain.level.desc())))
    accounts = list(s.scalars(select(Account).where(Account.domain_id.in_([d.id for d in subs]))))
    if accounts and not cleanup:
        raise ResourceInUse(f"Can't delete the domain {dom.name}: it still has {len(accounts)} account(s); "
                            "delete them first or pass cleanup=true")
    for acc in accounts:
        _delete_account_rows(s, acc)
    for d in subs:                     # deepest first, one by one: a child row must go before its parent's
        s.delete(d)
        s.flush()
    events.record(s, ctx, "DOMAIN.DELETE", f"Domain {dom.name} deleted", resource_type="Domain", resource_uuid=dom.uuid)


# ---------------------------------------------------------------- accounts

def _role_for(s, accounttype, roleid) -> Role:
    if roleid:
        role = s.scalar(select(Role).where(Role.uuid == roleid))
        if role is None:
            raise InvalidParameter(f"Unable to find role by id {roleid}")
        return role
    if accounttype is None:
        raise InvalidParameter("Either accounttype or roleid must be passed")
    want = {USER: "User", ROOT_ADMIN: "Admin", DOMAIN_ADMIN: "DomainAdmin"}.get(accounttype)
    if want is None:
        raise InvalidParameter(f"Invalid account type {accounttype}: use 0 (user), 1 (root admin) or 2 (domain admin)")
    return s.scalar(select(Role).where(Role.role_type == want).order_by(Role.id))


def create_account(s, ctx, *, username, password, email=None, firstname=None, lastname=None, account=None,
                   accounttype=None, roleid=None, domainid=None, networkdomain=None, timezone=None) -> Account:
    if not ctx.is_admin:
        raise PermissionDenied("Only administrators can create accounts")
    role = _role_for(s, accounttype, roleid)
    atype = TYPE_OF_ROLE[role.role_type]
    if atype == ROOT_ADMIN and not ctx.is_root_admin:
        raise PermissionDenied("Only the root administrator can create root administrators")
    dom = get_domain(s, ctx, domainid) if domainid else s.get(Domain, ctx.domain_id)
    name = account or username
    if s.scalar(select(Account).where(Account.domain_id == dom.id, Account.name == name)):
        raise InvalidParameter(f"The specified account: {name} already exists")
    if not password:
        raise InvalidParameter("Password cannot be empty")
    acc = Account(name=name, account_type=atype, role_id=role.id, domain_id=dom.id, network_domain=networkdomain)
    s.add(acc)
    s.flush()
    _new_user(s, acc, dom, username, password, email, firstname, lastname, timezone)
    events.record(s, ctx, "ACCOUNT.CREATE", f"Account {name} created in domain {dom.path}",
                  resource_type="Account", resource_uuid=acc.uuid)
    return acc


def _new_user(s, acc, dom, username, password, email, firstname, lastname, timezone) -> User:
    if s.scalar(select(User).join(Account, Account.id == User.account_id)
                .where(User.username == username, Account.domain_id == dom.id)):
        raise InvalidParameter(f"The user {username} already exists in domain {dom.name}")
    user = User(username=username, password=hash_password(password), account_id=acc.id, email=email,
                firstname=firstname, lastname=lastname, timezone=timezone)
    s.add(user)
    s.flush()
    return user


def get_account(s, ctx, uuid=None, name=None, domainid=None) -> Account:
    if uuid:
        acc = s.scalar(select(Account).where(Account.uuid == uuid))
    else:
        if not name:
            raise InvalidParameter("Either id or account name (with domainid) must be passed")
        dom = get_domain(s, ctx, domainid) if domainid else s.get(Domain, ctx.domain_id)
        acc = s.scalar(select(Account).where(Account.name == name, Account.domain_id == dom.id))
    if acc is None:
        raise InvalidParameter(f"Unable to find account by {'id ' + uuid if uuid else 'name ' + str(name)}")
    check_access(s, ctx, acc.id, "account")
    return acc


def list_accounts(s, ctx, q: ListQuery, id=None, name=None, accounttype=None, state=None):
    stmt = select(Account).join(Domain, Domain.id == Account.domain_id).where(Account.id != 1).order_by(Account.id)
    if not ctx.is_admin:
        stmt = stmt.where(Account.id == ctx.account_id)
    else:
        base = get_domain(s, ctx, q.domainid) if q.domainid else s.get(Domain, ctx.domain_id)
        if q.domainid and not (q.isrecursive or q.listall):
            stmt = stmt.where(Account.domain_id == base.id)
        else:
            stmt = stmt.where(Account.domain_id.in_(subtree_ids(base.id)))
    if id:
        stmt = stmt.where(Account.uuid == id)
    if name or q.account:
        stmt = stmt.where(func.lower(Account.name) == (name or q.account).lower())
    if accounttype is not None:
        stmt = stmt.where(Account.account_type == accounttype)
    if state:
        stmt = stmt.where(func.lower(Account.state) == state.lower())
    stmt = stmt.where(*keyword_filter(q, Account.name))
    return paginate(s, stmt, q)


def update_account(s, ctx, acc: Account, newname=None, networkdomain=None, roleid=None) -> Account:
    if not ctx.is_admin:
        raise PermissionDenied("Only administrators can update accounts")
    if newname and newname != acc.name:
        if acc.id in (1, 2):
            raise InvalidParameter("The system and admin accounts cannot be renamed")
        if s.scalar(select(Account).where(Account.domain_id == acc.domain_id, Account.name == newname)):
            raise InvalidParameter(f"The specified account: {newname} already exists")
        acc.name = newname
    if networkdomain is not None:
        acc.network_domain = networkdomain
    if roleid:
        role = _role_for(s, None, roleid)
        if TYPE_OF_ROLE[role.role_type] != acc.account_type:
            raise InvalidParameter("The role's type must match the account's type")
        acc.role_id = role.id
    events.record(s, ctx, "ACCOUNT.UPDATE", f"Account {acc.name} updated", resource_type="Account", resource_uuid=acc.uuid)
    return acc


def set_account_state(s, ctx, acc: Account, state: str) -> Account:
    """state: enabled | disabled | locked."""
    if not ctx.is_admin:
        raise PermissionDenied("Only administrators can enable, disable or lock accounts")
    if acc.id in (1, 2) or acc.id == ctx.account_id:
        raise PermissionDenied(f"Account {acc.name} cannot be {state} by its own users or as a built-in account")
    acc.state = state
    verb = {"enabled": "ENABLE", "disabled": "DISABLE", "locked": "LOCK"}[state]
    events.record(s, ctx, f"ACCOUNT.{verb}", f"Account {acc.name} {state}", resource_type="Account", resource_uuid=acc.uuid)
    if state != "enabled":   # a disabled account's sessions end at once
        users = select(User.id).where(User.account_id == acc.id)
        s.execute(delete(Session).where(Session.user_id.in_(users)))
    return acc


def delete_account(s, ctx, acc: Account) -> None:
    if not ctx.is_admin:
        raise PermissionDenied("Only administrators can delete accounts")
    if acc.id in (1, 2) or acc.id == ctx.account_id:
        raise PermissionDenied(f"Account {acc.name} cannot be deleted")
    in_use = limits.usages(s, acc.id)
    if any(v for v in in_use.values()):
        busy = ", ".join(f"{t}={v}" for t, v in in_use.items() if v)
        raise ResourceInUse(f"Account {acc.name} still owns resources ({busy}); delete them first")
    _delete_account_rows(s, acc)
    events.record(s, ctx, "ACCOUNT.DELETE", f"Account {acc.name} deleted", resource_type="Account", resource_uuid=acc.uuid)


def _delete_account_rows(s, acc: Account) -> None:
    users = select(User.id).where(User.account_id == acc.id)
    s.execute(delete(Session).where(Session.user_id.in_(users)))
    s.execute(delete(User).where(User.account_id == acc.id))
    s.execute(delete(ResourceLimit).where(ResourceLimit.account_id == acc.id))
    s.delete(acc)


# ---------------------------------------------------------------- users

def get_user(s, ctx, uuid: str) -> User:
    user = s.scalar(select(User).where(User.uuid == uuid))
    if user is None:
        raise InvalidParameter(f"Unable to find user by id {uuid}")
    if user.id != ctx.user_id:
        check_access(s, ctx, user.account_id, "user")
    return user


def create_user(s, ctx, *, account, username, password, email=None, firstname=None, lastname=None,
                domainid=None, timezone=None) -> User:
    acc = get_account(s, ctx, name=account, domainid=domainid)
    if not ctx.is_admin:
        raise PermissionDenied("Only administrators can create users")
    user = _new_user(s, acc, s.get(Domain, acc.domain_id), username, password, email, firstname, lastname, timezone)
    events.record(s, ctx, "USER.CREATE", f"User {username} created in account {acc.name}", resource_type="User", resource_uuid=user.uuid)
    return user


def list_users(s, ctx, q: ListQuery, id=None, username=None, state=None, accounttype=None):
    stmt = select(User).join(Account, Account.id == User.account_id).join(Domain, Domain.id == Account.domain_id) \
        .where(User.id != 1).order_by(User.id)
    if not ctx.is_admin:
        stmt = stmt.where(User.account_id == ctx.account_id)
    else:
        base = get_domain(s, ctx, q.domainid) if q.domainid else s.get(Domain, ctx.domain_id)
        stmt = stmt.where(Account.domain_id.in_(subtree_ids(base.id)))
    if q.account:
        stmt = stmt.where(Account.name == q.account)
    if id:
        stmt = stmt.where(User.uuid == id)
    if username:
        stmt = stmt.where(func.lower(User.username) == username.lower())
    if state:
        stmt = stmt.where(func.lower(User.state) == state.lower())
    if accounttype is not None:
        stmt = stmt.where(Account.account_type == accounttype)
    stmt = stmt.where(*keyword_filter(q, User.username))
    return paginate(s, stmt, q)


def update_user(s, ctx, user: User, **fields) -> User:
    for k in ("email", "firstname", "lastname", "timezone"):
        if fields.get(k) is not None:
            setattr(user, k, fields[k])
    if fields.get("username") and fields["username"] != user.username:
        # unique within the domain, as at creation: login names a user by domain and username
        dom = s.get(Domain, s.get(Account, user.account_id).domain_id)
        if s.scalar(select(User.id).join(Account, Account.id == User.account_id)
                    .where(User.username == fields["username"], Account.domain_id == dom.id, User.id != user.id)):
            raise InvalidParameter(f"The user {fields['username']} already exists in domain {dom.name}")
        user.username = fields["username"]
    if fields.get("password"):
        if user.id == ctx.user_id and not ctx.is_admin:
            cur = fields.get("currentpassword")
            if not cur or not verify_password(user, cur):
                raise InvalidParameter("Current password is incorrect")
        user.password = hash_password(fields["password"])
    events.record(s, ctx, "USER.UPDATE", f"User {user.username} updated", resource_type="User", resource_uuid=user.uuid)
    return user


def set_user_state(s, ctx, user: User, state: str) -> User:
    """state: enabled | disabled | locked. Enabling also clears the failed-login count (logins.py), so a user the
    login throttle disabled starts afresh."""
    if not ctx.is_admin:
        raise PermissionDenied("Only administrators can enable, disable or lock users")
    if user.id in (1, 2) or user.id == ctx.user_id:
        raise PermissionDenied(f"User {user.username} cannot be {state} by itself or as a built-in user")
    user.state = state
    if state == "enabled":
        user.login_attempts, user.login_blocked_until = 0, None
    else:                    # its sessions end at once
        s.execute(delete(Session).where(Session.user_id == user.id))
    verb = {"enabled": "ENABLE", "disabled": "DISABLE", "locked": "LOCK"}[state]
    events.record(s, ctx, f"USER.{verb}", f"User {user.username} {state}", resource_type="User", resource_uuid=user.uuid)
    return user


def delete_user(s, ctx, user: User) -> None:
    if user.id in (1, 2) or user.id == ctx.user_id:
        raise PermissionDenied(f"User {user.username} cannot be deleted")
    if not ctx.is_admin:
        raise PermissionDenied("Only administrators can delete users")
    s.execute(delete(Session).where(Session.user_id == user.id))
    s.delete(user)
    events.record(s, ctx, "USER.DELETE", f"User {user.username} deleted", resource_type="User", resource_uuid=user.uuid)


def register_user_keys(s, ctx, user: User) -> tuple[str, str]:
    api_key, secret = new_keys()
    user.api_key, user.secret_key = api_key, crypto.encrypt(secret)
    events.record(s, ctx, "REGISTER.USER.KEY", f"New API keys for user {user.username}", resource_type="User", resource_uuid=user.uuid)
    return api_key, secret


def list_roles(s, ctx, q: ListQuery, id=None, name=None, type=None):
    stmt = select(Role).order_by(Role.id)
    if id:
        stmt = stmt.where(Role.uuid == id)
    if name:
        stmt = stmt.where(func.lower(Role.name) == name.lower())
    if type:
        stmt = stmt.where(func.lower(Role.role_type) == type.lower())
    stmt = stmt.where(*keyword_filter(q, Role.name))
    return paginate(s, stmt, q)


# ---------------------------------------------------------------- updateResourceCount's accounts (limits.recalculate)

def update_resource_count(s, ctx, domain_uuid: str, account: str | None, rtype: str | None) -> list[dict]:
    """updateResourceCount: recount the named account of the domain, or every account of the domain and its
    subdomains, from the objects themselves (and, for the root administrator on the ROOT domain, every pool's
    allocated bytes). One row per account and resource type with the new count."""
    dom = get_domain(s, ctx, domain_uuid)
    if account:
        accs = [get_account(s, ctx, name=account, domainid=domain_uuid)]
    elif not ctx.is_admin:
        raise PermissionDenied("Only administrators can recount a domain's resources")
    else:
        accs = list(s.scalars(select(Account).where(Account.domain_id.in_(subtree_ids(dom.id))).order_by(Account.id)))
    rows = []
    for acc in accs:
        adom = s.get(Domain, acc.domain_id)
        for t, (_, new) in limits.recalculate(s, acc, [rtype] if rtype else None).items():
            rows.append({"account": acc.name, "domainid": adom.uuid, "domain": adom.name,
                         "type": limits.LIMIT_TYPES[t][0], "typename": t, "count": new})
    if ctx.is_root_admin and not account and dom.parent_id is None:
        pools.recount_all(s)
    return rows