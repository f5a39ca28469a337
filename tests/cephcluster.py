"""A throwaway one-node Ceph cluster (1 mon, 1 memstore osd, 1 mgr for usage statistics) for the tests,
made by the project's scripts/ceph-up.sh and stopped by scripts/ceph-down.sh (which signal only the
daemons whose pid files ceph-up.sh wrote, checked against their command lines).

    cluster = CephCluster().start()     # cluster.mon_host, .pool, .user, .key, .rbd_url, .spec()
    cluster.rbd("ls", "-l")             # the rbd CLI as the cluster's cephx user (keyring file, no key in argv)
    cluster.stop()
"""
import json
import subprocess
import tempfile
from pathlib import Path
from urllib.parse import quote

ROOT = Path(__file__).resolve().parents[1]


class CephCluster:
    def __init__(self, workdir: str | None = None, mgr: bool = True):
        self.dir = Path(workdir or tempfile.mkdtemp(prefix="vs-ceph-", dir="/tmp"))
        self.mgr = mgr
        self.env: dict = {}

    def start(self, timeout: float = 120) -> "CephCluster":
        env = {"CEPH_MGR": "1" if self.mgr else "0", "PATH": "/usr/sbin:/usr/bin:/sbin:/bin"}
        r = subprocess.run([str(ROOT / "scripts" / "ceph-up.sh"), str(self.dir)], capture_output=True, text=True,
                           timeout=timeout, env=env)
        if r.returncode:
            raise RuntimeError(f"ceph-up.sh failed ({r.returncode}): {r.stderr[-2000:]}")
        self.env = json.loads((self.dir / "ceph.json").read_text())
        return self

    def stop(self) -> None:
        subprocess.run([str(ROOT / "scripts" / "ceph-down.sh"), str(self.dir)], timeout=60, check=False)

    @property
    def mon_host(self) -> str:
        return self.env["CEPH_MON_HOST"]

    @property
    def pool(self) -> str:
        return self.env["CEPH_POOL"]

    @property
    def user(self) -> str:
        return self.env["CEPH_USER"]

    @property
    def key(self) -> str:
        return self.env["CEPH_KEY"]

    def rbd_url(self, key: str | None = None, mon: str | None = None, pool: str | None = None) -> str:
        return f"rbd://{self.user}:{quote(key or self.key, safe='')}@{mon or self.mon_host}/{pool or self.pool}"

    def spec(self, uuid: str = "rbd-1", **kw) -> dict:
        """An agent pool spec for this cluster."""
        return {"uuid": uuid, "type": "RBD", "path": self.pool, "monitors": [self.mon_host], "user": self.user,
                "key": self.key, **kw}

    def rbd(self, *args, admin: bool = False, timeout: float = 60) -> str:
        who = ["--id", "admin", "--keyring", self.env["CEPH_KEYRING"]] if admin else \
            ["--id", self.user, "--keyring", self.env["CEPH_USER_KEYRING"]]
        r = subprocess.run(["rbd", "-c", "/dev/null", "-m", self.env["CEPH_MON_HOST_V2"], *who,
                            "--rados-osd-op-timeout", "30", *args], capture_output=True, text=True, timeout=timeout)
        if r.returncode:
            raise RuntimeError(f"rbd {' '.join(args)}: {r.stderr.strip()[-500:]}")
        return r.stdout

    def image_info(self, name: str) -> dict:
        return json.loads(self.rbd("info", "--format", "json", f"{self.pool}/{name}"))

    def images(self) -> list[str]:
        return json.loads(self.rbd("ls", "--format", "json", self.pool))
