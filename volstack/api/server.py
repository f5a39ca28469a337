"""The /client/api endpoint: authentication, dispatch, async job submission, envelopes, errors."""
import logging
from dataclasses import dataclass
from http.cookies import SimpleCookie
from urllib.parse import parse_qsl

from volstack.api import binding, wire
from volstack.api.registry import API, VIEWER, Command, Obj, Success
from volstack.api.signing import AUTH_FAILED, check_expiry, verify
from volstack.db.models import AsyncJob, User
from volstack.errors import CloudError, InternalError, MethodNotAllowed, Unauthorized, UnknownCommand
from volstack.services import accounts, logins
from volstack.services import settings as S

log = logging.getLogger("volstack.api")
GENERIC_530 = "Internal error executing command, please contact your system administrator"
SESSION_FREE = {"login", "logout"}


@dataclass
class Req:
    """What a handler gets: the session, the caller, and the management server's parts."""
    s: object
    ctx: object
    ms: object          # ManagementServer: .db, .settings, .jobs
    cmd: Command
    progress: object = None   # in a job: progress(percent, proc_status=None) records how far it got

    def start_task(self, name: str, params: dict, instance_uuid: str | None = None, sync_key: str | None = None,
                   queue_key: str | None = None):
        """Queue a declared background task in this request's transaction (it runs once that commits); it waits
        for the jobs of sync_key (default: of its instance) and for a slot of queue_key (a throttled queue)."""
        return start_task(self.ms.jobs, self.s, self.ctx, name, params, instance_uuid, sync_key, queue_key)


def start_task(jobs, s, ctx, name: str, params: dict, instance_uuid: str | None = None, sync_key: str | None = None,
               queue_key: str | None = None):
    """Req.start_task for work the management server starts by itself (periodic tasks), in session s."""
    task = API.tasks[name]
    return jobs.submit(s, cmd=name, params=params, ctx=ctx, instance_type=task.instance_type,
                       instance_uuid=instance_uuid, queue_key=queue_key,
                       sync_key=sync_key or (f"{task.instance_type}:{instance_uuid}" if instance_uuid else None))


class ApiApp:
    def __init__(self, ms, registry=API):
        self.ms, self.registry = ms, registry

    # ------------------------------------------------------------ WSGI

    def __call__(self, environ, start_response):
        path = environ.get("PATH_INFO", "")
        if path.rstrip("/") != "/client/api":
            start_response("404 Not Found", [("Content-Type", "text/plain")])
            return [b"volstack: the CloudStack API is at /client/api\n"]
        method = environ.get("REQUEST_METHOD", "GET")
        pairs = parse_qsl(environ.get("QUERY_STRING", ""), keep_blank_values=True)
        if method == "POST" and environ.get("CONTENT_TYPE", "").startswith("application/x-www-form-urlencoded"):
            length = int(environ.get("CONTENT_LENGTH") or 0)
            pairs += parse_qsl(environ["wsgi.input"].read(length).decode("utf-8", "replace"), keep_blank_values=True)
        cookies = SimpleCookie(environ.get("HTTP_COOKIE", ""))
        status, headers, body = self.handle(pairs, {k: v.value for k, v in cookies.items()}, method)
        start_response(status, headers)
        return [body]

    def handle(self, pairs, cookies, method="GET"):
        """Returns (status line, headers, body) for one request."""
        params: dict[str, str] = {}
        for k, v in pairs:
            params.setdefault(k, v)
        lower = {}
        for k, v in params.items():
            lower.setdefault(k.lower(), v)
        fmt = "json" if lower.get("response", "xml").lower() == "json" else "xml"
        name = lower.get("command", "")
        cmd = self.registry.get(name) if name else None
        envelope = f"{cmd.name.lower() if cmd else 'error'}response"
        extra_headers = []
        try:
            if not name:
                raise UnknownCommand("The command parameter is missing")
            if cmd is None:
                raise UnknownCommand(f"The given command:{name} does not exist or it is not available for user")
            if cmd.name == "login":
                if method != "POST":
                    raise MethodNotAllowed("login is only accepted as a POST request")
                body, extra_headers = self._login(lower)
            elif cmd.name == "logout":
                body = self._logout(lower, cookies)
            else:
                body = self._call(cmd, params, lower, cookies)
            status = "200 OK"
        except CloudError as exc:
            status = f"{exc.errorcode} {type(exc).__name__}"
            body = wire.error_body(exc.errorcode, exc.cserrorcode, exc.text)
            extra_headers = [("X-Description", _header_safe(exc.text))]
        except Exception:
            log.exception("command %s failed", name)
            status = "530 InternalError"
            body = wire.error_body(530, 4250, GENERIC_530)
            extra_headers = [("X-Description", GENERIC_530)]
        data, ctype = wire.render(envelope, body, fmt, self._json_type())
        return status, [("Content-Type", ctype), ("Content-Length", str(len(data)))] + extra_headers, data

    def _json_type(self) -> str:
        # read after the error handler: a database that cannot answer (locked, gone) must still get an
        # error envelope, never the WSGI server's bare plain-text 500
        try:
            return self.ms.json_content_type
        except Exception as exc:
            log.warning("reading %s failed, answering with its default: %s", S.JSON_CONTENT_TYPE.name, exc)
            return S.JSON_CONTENT_TYPE.default

    # ------------------------------------------------------------ authentication

    def _authenticate(self, s, params, lower, cookies):
        """The caller's CallContext."""
        api_key = lower.get("apikey")
        if api_key:
            ident = accounts.identity_by_api_key(s, api_key)
            if ident is None or "signature" not in lower:
                raise Unauthorized(AUTH_FAILED)
            ctx, secret = ident
            check_expiry(lower)
            signed = {k: v for k, v in params.items() if k.lower() != "signature"}
            signed["signature"] = lower["signature"]
            if not verify(signed, secret):
                raise Unauthorized(AUTH_FAILED)
            return ctx
        key = lower.get("sessionkey")
        if not key or cookies.get("sessionkey") != key:
            raise Unauthorized("unable to verify user credentials")
        user = logins.session_user(s, key, self.ms.settings_value(S.SESSION_TIMEOUT, s))
        if user is None:
            raise Unauthorized("unable to verify user credentials")
        return accounts.context_for(s, user)

    def _login(self, lower):
        from volstack.api.views import login_response
        for need in ("username", "password"):
            if not lower.get(need):
                raise binding.InvalidParameter(f"Unable to execute API command login due to missing parameter {need}")
        with self.ms.db.session() as s:
            outcome = logins.login(s, lower["username"], lower["password"], lower.get("domain"), lower.get("domainid"))
            if isinstance(outcome, CloudError):
                failed = outcome       # answered after the commit: the failure's count and lock must stay
            else:
                failed, (user, key) = None, outcome
                body = login_response(s, user, key, self.ms)
        if failed is not None:
            raise failed
        cookie = f"sessionkey={key}; Path=/client; HttpOnly"
        return body, [("Set-Cookie", cookie), ("Set-Cookie", f"JSESSIONID={key}; Path=/client; HttpOnly")]

    def _logout(self, lower, cookies):
        key = lower.get("sessionkey") or cookies.get("sessionkey")
        if key:
            with self.ms.db.session() as s:
                logins.logout(s, key)
        return {"description": "success"}

    # ------------------------------------------------------------ dispatch

    def _call(self, cmd: Command, params, lower, cookies) -> dict:
        if cmd.before is not None:
            cmd.before(self.ms, lower)
        # Session logins record their last access, so only API-key calls of read commands are read-only.
        with self.ms.db.session(readonly=cmd.readonly and "apikey" in lower) as s:
            ctx = self._authenticate(s, params, lower, cookies)
            if not cmd.allowed(ctx.account_type):
                raise UnknownCommand(f"The given command:{cmd.name} does not exist or it is not available for user "
                                     f"with id:{ctx.user_uuid}")
            p = binding.bind(s, cmd, lower, ctx.account_type)
            req = Req(s, ctx, self.ms, cmd)
            if not cmd.is_async:
                viewer = VIEWER.set(ctx)
                try:
                    result = wire.body_of(cmd.handler(req, p))
                finally:
                    VIEWER.reset(viewer)
            else:
                result = {}
                instance = p.get(cmd.instance_param) if cmd.instance_param else None
                if cmd.prepare is not None:
                    instance = cmd.prepare(req, p)
                    result["id"] = instance
                    p[cmd.instance_param or "id"] = instance
                sync_key = f"{cmd.instance_type}:{instance}" if cmd.instance_type and instance else None
                queue_key = None
                if cmd.sync is not None:
                    sync_key, queue_key = cmd.sync(req, p, instance)
                job = self.ms.jobs.submit(s, cmd=cmd.name, params=dict(p), ctx=ctx, instance_type=cmd.instance_type,
                                          instance_uuid=instance, sync_key=sync_key, queue_key=queue_key)
                result["jobid"] = job.uuid
        if not cmd.readonly:
            self.ms.jobs.wake()      # the job (or tasks a sync command queued) is committed now
        return result

    # ------------------------------------------------------------ the job side of async commands

    def execute_job(self, job: AsyncJob, progress) -> dict:
        cmd = self.registry.get(job.cmd) or self.registry.tasks.get(job.cmd)
        if cmd is None:
            raise InternalError(f"Command {job.cmd} is not known to this management server version")
        moved, ctx = {}, None     # every object the job moves (Lifecycle.fire), to settle them if it fails
        try:
            with self.ms.db.session() as s:
                s.info["moved"] = moved
                user = s.get(User, job.user_id)
                ctx = accounts.context_for(s, user, job_uuid=job.uuid)

                def report(percent, proc_status=None):
                    # Reporting progress commits the work done so far: pollers see both, and on SQLite
                    # the progress write could not get the lock this session would otherwise hold.
                    s.commit()
                    progress(percent, proc_status)
                req = Req(s, ctx, self.ms, cmd, report)
                viewer = VIEWER.set(ctx)
                try:
                    result = cmd.handler(req, binding.Params(job.params or {}))
                finally:
                    VIEWER.reset(viewer)
                if isinstance(result, (Obj, Success)):
                    return wire.body_of(result)
                return result
        except Exception as exc:
            if moved:             # the session is rolled back; what it had committed mid-job is settled here
                from volstack.services import recovery
                text = exc.text if isinstance(exc, CloudError) else "an internal error"
                try:
                    recovery.settle_moved(self.ms.db, ctx, moved, f"{job.cmd} failed: {text}")
                except Exception:
                    log.exception("settling the objects of failed job %s (%s) failed", job.uuid, job.cmd)
            raise

    def on_interrupt(self, job: AsyncJob) -> str:
        """A job's server died mid-way: settle its object (declared per instance type), then retry or fail it."""
        cmd = self.registry.get(job.cmd) or self.registry.tasks.get(job.cmd)
        action = cmd.on_interrupt if cmd else "fail"
        from volstack.services import snapshots, vm_snapshots, vms, volumes
        settle = {"Volume": volumes.settle_interrupted, "VirtualMachine": vms.settle_interrupted,
                  "Snapshot": snapshots.settle_interrupted,
                  "VmSnapshot": vm_snapshots.settle_interrupted}.get(job.instance_type)
        if action == "fail" and settle is not None and job.instance_uuid:
            from volstack.services.context import system_context
            try:
                settle(self.ms.db, system_context(), job.instance_uuid, job.cmd)
            except Exception:
                log.exception("settling %s %s after an interrupted %s failed", job.instance_type,
                              job.instance_uuid, job.cmd)
        return action


    def on_expired(self, job: AsyncJob) -> str:
        """A job waited in a throttled queue past job.expire.minutes: its object gets the reason; returns the
        job's error text."""
        from volstack.services import snapshots
        from volstack.services.context import system_context
        if job.instance_type == "Snapshot" and job.instance_uuid:
            return snapshots.settle_expired(self.ms.db, system_context(), job.instance_uuid, job.cmd,
                                            self.ms.settings.get(S.JOB_EXPIRE_MINUTES))
        return f"{job.cmd} waited longer than job.expire.minutes for a free slot and was cancelled; submit it again"


def _header_safe(text: str) -> str:
    return text.replace("\r", " ").replace("\n", " ").encode("latin-1", "replace").decode("latin-1")[:1024]
