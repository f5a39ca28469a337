"""The bounded form of issue 12's fault workload (the long form: `python -m tests.faults.workload --seed N --ops
200 --kills 18`, see tests/faults/workload.py): a seeded mix of operations on a local and an NFS pool with real
guests, the management server and the agent SIGKILLed while jobs run, then a census that must be clean."""
import uuid

import pytest

from tests.faults import census, workload


@pytest.mark.slow                      # real guests, NFS and SIGKILLs: a couple of minutes
def test_fault_workload_census_is_clean(nfs_server, tmp_path):
    pseudo = f"/faults-{uuid.uuid4().hex[:8]}"
    url = nfs_server.add_export(pseudo, tmp_path / "nfs")
    try:
        result = workload.run(seed=12, ops=30, kills=5, root=tmp_path, nfs_url=url, spare_deploys=True)
    finally:
        nfs_server.remove_export(pseudo)
    print(census.summary(result))
    assert result["kills"] >= 4 and result["operations"] >= 25
    assert result["clean"], census.summary(result)
