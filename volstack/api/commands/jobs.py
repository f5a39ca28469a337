"""queryAsyncJobResult and listAsyncJobs."""
from sqlalchemy import select

from volstack.api.commands.common import list_query, lst
from volstack.api.registry import API, DATE, OWNER_LIST_PARAMS, STRING, USER, UUID, Param as P
from volstack.api.views import ASYNCJOB, Lookups
from volstack.db.models import AsyncJob
from volstack.errors import InvalidParameter
from volstack.services.context import check_access, owner_filter
from volstack.services.listing import paginate


# A job about to finish on this server is waited for this long before answering (CloudStack-compatible: the
# answer is the same, it only comes sooner than the client's next poll). Bounded: a waitress thread waits.
LONG_POLL_SECONDS = 0.5


@API.command("queryAsyncJobResult", "Retrieves the current status of asynchronous job.", [
    P("jobid", UUID, "the ID of the asynchronous job"),
    P("resourceid", UUID, "the ID of the resource the job works on; with resourcetype, the latest job on it"),
    P("resourcetype", STRING, "the type of that resource, e.g. Volume, Host, Account"),
], view=ASYNCJOB, access=USER,
   before=lambda ms, lower: ms.jobs.wait_finished(lower.get("jobid"), LONG_POLL_SECONDS))
def query_async_job_result(req, p):
    if p.jobid:
        job = req.s.scalar(select(AsyncJob).where(AsyncJob.uuid == p.jobid))
    elif p.resourceid and p.resourcetype:
        job = req.s.scalar(select(AsyncJob).where(AsyncJob.instance_uuid == p.resourceid,
                                                  AsyncJob.instance_type.ilike(p.resourcetype))
                           .order_by(AsyncJob.id.desc()))
    else:
        raise InvalidParameter("Unable to execute API command queryasyncjobresult due to missing parameter jobid")
    if job is None:
        raise InvalidParameter(f"Unable to find the async job {p.jobid or p.resourceid}: it does not exist or "
                               "its record expired (job.expire.minutes)")
    check_access(req.s, req.ctx, job.account_id, "async job")
    return ASYNCJOB.render(job, Lookups(req.s))


@API.command("listAsyncJobs", "Lists all pending asynchronous jobs for the account.", [
    P("startdate", DATE, "The start date of the async job (use format \"yyyy-MM-dd'T'HH:mm:ss'+'SSSS\")"),
    P("managementserverid", UUID, "The id of the management server"),
    P("resourceid", UUID, "the ID of the resource the jobs work on"),
    P("resourcetype", STRING, "the type of that resource"),
    *OWNER_LIST_PARAMS], view=ASYNCJOB, is_list=True, access=USER)
def list_async_jobs(req, p):
    q = list_query(req, p)
    stmt = select(AsyncJob).where(*owner_filter(req.s, req.ctx, AsyncJob, listall=q.listall, isrecursive=q.isrecursive,
                                                account=q.account, domain_uuid=q.domainid)).order_by(AsyncJob.id.desc())
    if p.startdate:
        from datetime import datetime, timezone
        start = datetime.fromisoformat(p.startdate)
        if start.tzinfo:
            start = start.astimezone(timezone.utc).replace(tzinfo=None)
        stmt = stmt.where(AsyncJob.created >= start)
    if p.resourceid:
        stmt = stmt.where(AsyncJob.instance_uuid == p.resourceid)
    if p.resourcetype:
        stmt = stmt.where(AsyncJob.instance_type.ilike(p.resourcetype))
    if q.keyword:
        stmt = stmt.where(AsyncJob.cmd.ilike(f"%{q.keyword}%"))
    return lst(req, ASYNCJOB, paginate(req.s, stmt, q))
