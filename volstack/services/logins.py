"""Password logins and API sessions, with CloudStack's lock after `incorrect.login.attempts.allowed` failures.

- Each wrong password of a user counts; the count ends at the next good login. At the allowed number the user is
  disabled (as CloudStack does) and only an administrator's enableUser lets it log in again.
- Between failures a user waits a growing delay (1 s, 2 s, 4 s ... at most 30 s): a login inside it is refused
  without the password being tried, so guessing is slowed without holding a server thread asleep.
- Every failure answers the same text, whether the user exists, is disabled, waits or gave a wrong password, and
  an unknown user costs the same password hash, so neither reveals which usernames exist.
- Session keys are stored as their SHA-256: a copy of the database (or its -wal file) holds no usable key.
"""
import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import func, select

from volstack.db.models import Account, Domain, Session, User, utcnow
from volstack.errors import PermissionDenied
from volstack.services import events, settings as S
from volstack.services.accounts import _usable, context_for, hash_password, verify_password

_DUMMY = hash_password(secrets.token_urlsafe(16))    # verified against when the user does not exist
BACKOFF_BASE, BACKOFF_MAX = 1.0, 30.0


def session_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def backoff_seconds(failures: int) -> float:
    return min(BACKOFF_BASE * 2 ** (failures - 1), BACKOFF_MAX) if failures > 0 else 0.0


def _domain(s, domain_path, domain_uuid):
    if domain_uuid:
        return s.scalar(select(Domain).where(Domain.uuid == domain_uuid))
    path = (domain_path or "/").strip()
    path = "/" + path.strip("/") + "/" if path.strip("/") else "/"
    if path.upper().startswith("/ROOT/"):
        path = path[5:]
    return s.scalar(select(Domain).where(func.lower(Domain.path) == path.lower()))


def login(s, username: str, password: str, domain_path: str | None = None,
          domain_uuid: str | None = None) -> tuple[User, str] | PermissionDenied:
    """(user, session key), or the error to answer. The error is returned, not raised, so that the caller commits
    what a failure changed (the count, the lock) before answering: a raised error would roll it back."""
    # CloudStack answers a failed login with 531 (account error), not 401.
    fail = PermissionDenied(f"Failed to authenticate user {username} in domain {domain_path or domain_uuid or '/'}; "
                            "please provide valid credentials (after repeated failures wait a few seconds; a user "
                            "locked by too many failures is enabled again by an administrator)")
    dom = _domain(s, domain_path, domain_uuid)
    user = dom and s.scalar(select(User).join(Account, Account.id == User.account_id)
                            .where(User.username == username, Account.domain_id == dom.id))
    if user is None:
        verify_password(User(password=_DUMMY), password)
        return fail
    now = utcnow()
    if not _usable(s, user) or (user.login_blocked_until and now < user.login_blocked_until):
        return fail
    if not verify_password(user, password):
        _failed(s, user, now)
        return fail
    user.login_attempts, user.login_blocked_until = 0, None
    key = secrets.token_urlsafe(32)
    s.add(Session(key=session_hash(key), user_id=user.id))
    events.record(s, context_for(s, user), "USER.LOGIN", f"User {username} logged in", resource_type="User",
                  resource_uuid=user.uuid)
    return user, key


def _failed(s, user: User, now) -> None:
    user.login_attempts = (user.login_attempts or 0) + 1
    allowed = S.Settings.value_in(s, S.INCORRECT_LOGIN_ATTEMPTS)
    if user.login_attempts >= allowed and user.id != 2:
        # the built-in admin is never locked out (CloudStack exempts its internal accounts too): only slowed
        user.state = "disabled"
        events.record(s, context_for(s, user), "USER.DISABLE",
                      f"User {user.username} disabled after {user.login_attempts} failed login attempts "
                      f"(incorrect.login.attempts.allowed={allowed}); an administrator enables it again",
                      resource_type="User", resource_uuid=user.uuid, level="WARN")
        return
    user.login_blocked_until = now + timedelta(seconds=backoff_seconds(user.login_attempts))


def session_user(s, key: str, timeout_seconds: int) -> User | None:
    sess = s.get(Session, session_hash(key))
    if sess is None:
        return None
    now = utcnow()
    if now - sess.last_access > timedelta(seconds=timeout_seconds):
        s.delete(sess)
        s.commit()          # the caller answers 401 by raising, which rolls back: the expired row goes now
        return None
    sess.last_access = now
    user = s.get(User, sess.user_id)
    return user if _usable(s, user) else None


def logout(s, key: str) -> None:
    sess = s.get(Session, session_hash(key))
    if sess is not None:
        user = s.get(User, sess.user_id)
        s.delete(sess)
        events.record(s, context_for(s, user), "USER.LOGOUT", f"User {user.username} logged out",
                      resource_type="User", resource_uuid=user.uuid)
