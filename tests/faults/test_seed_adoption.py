"""Deliver 3 of issue 12 (found by the fault workload): a template's copy to a pool whose seeding job died with the
management server is adopted when its copy finished on the host, and taken over when nothing copies it any more;
the next deploy no longer waits template_cache.STALE_SEED (10 min) for it."""
from datetime import timedelta

from sqlalchemy import select

from tests.helpers import pool_spec
from tests.support import client
from tests.test_templates import add_store, cloud, template_from_a_volume  # noqa: F401  (cloud is a fixture)
from tests.agentproc import wait_until
from volstack.db.image_models import ImageStore, Template, TemplatePoolRef, TemplateStoreRef
from volstack.db.models import utcnow
from volstack.services import imagestores


def _seed_died(server, template_uuid, pool_uuid):
    """What a deploy commits before the host copies the template to the pool, then its server dies: Creating,
    silent for a minute."""
    from volstack.db.storage_models import StoragePool
    with server.db.session() as s:
        t = s.scalar(select(Template).where(Template.uuid == template_uuid))
        pool = s.scalar(select(StoragePool).where(StoragePool.uuid == pool_uuid))
        for old in s.scalars(select(TemplatePoolRef).where(TemplatePoolRef.template_id == t.id)):
            s.delete(old)
        s.flush()
        s.add(TemplatePoolRef(template_id=t.id, pool_id=pool.id, install_path=f"tmpl-{t.uuid}", state="Creating",
                              last_used=utcnow() - timedelta(minutes=1)))
        src = s.scalar(select(TemplateStoreRef).where(TemplateStoreRef.template_id == t.id))
        return imagestores.spec(s.get(ImageStore, src.store_id)), src.install_path, f"tmpl-{t.uuid}"


def _deploy(c, template):
    api = client(c["server"], fetch_result=False)
    job = api.deployVirtualMachine(zoneid=c["zone"]["id"], serviceofferingid=c["so"]["id"], templateid=template["id"])
    # well within STALE_SEED: the hosts are asked after 15 s of silence
    return wait_until("the deploy to end", lambda: (lambda r: r if r["jobstatus"] else None)(
        api.queryAsyncJobResult(jobid=job["jobid"])), timeout=60)


def test_a_seed_whose_job_died_is_adopted_or_taken_over(cloud):
    api, server, tmp, agent = cloud["api"], cloud["server"], cloud["tmp"], cloud["agent"].client
    add_store(cloud)
    _, _, t = template_from_a_volume(cloud)
    pool = cloud["pool"]["id"]

    # 1. the copy had finished on the host: adopted, the deploy uses it
    store, src_name, name = _seed_died(server, t["id"], pool)
    (tmp / "primary" / name).unlink(missing_ok=True)
    agent.wait_task(agent.call_async("volume_copy", src_pool=store, src_name=src_name, src_format="qcow2",
                                     dst_pool=pool_spec(server, pool), dst_name=name, format="qcow2"))
    done = _deploy(cloud, t)
    assert done["jobstatus"] == 1, done
    assert any("had finished on its host after the job seeding it stopped; it is adopted" in e["description"]
               for e in api.listEvents(type="TEMPLATE.SEED", listall=True)["event"])

    # 2. nothing copies it any more (no such task on the host): the deploy takes the seed over
    _seed_died(server, t["id"], pool)
    (tmp / "primary" / name).unlink()
    agent.call("task_cancel", command="volume_copy", match={"dst_name": name})   # the finished one is left done
    done = _deploy(cloud, t)
    assert done["jobstatus"] == 1, done
    assert (tmp / "primary" / name).exists()
