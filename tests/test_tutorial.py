"""docs/tutorial.md cannot rot: its `sh` blocks run verbatim, in order, in one bash shell, against a real
`volstack up` (one KVM host with real QEMU), with the NFS server the tests share and a real HTTP server in
place of the block under "Your site"; then what the tutorial says it made is checked through the API."""
import configparser
import hashlib
import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from httpserver import FileServer

ROOT = Path(__file__).resolve().parent.parent
TUTORIAL = ROOT / "docs" / "tutorial.md"
VOLSTACK = str(Path(sys.executable).with_name("volstack"))


def blocks(text: str) -> list[tuple[str, str]]:
    """(heading, code) of every ```sh block, in order."""
    out, heading = [], ""
    for m in re.finditer(r"^(#+ [^\n]*)$|^```sh\n(.*?)^```$", text, re.M | re.S):
        if m.group(1):
            heading = m.group(1).lstrip("# ").strip()
        else:
            out.append((heading, m.group(2)))
    return out


@pytest.mark.slow
def test_the_tutorial_runs_as_written(nfs_pool, tmp_path):
    from volstack.cli import _builtin_template
    image = _builtin_template()
    assert image is not None, "scripts/build-template.sh builds the built-in template"
    http = FileServer().start()
    http.add("/volstack-tiny.qcow2", file=str(image))
    nfs_url, nfs_dir = nfs_pool
    server, export = re.fullmatch(r"nfs://([^/]+)(/.*)", nfs_url).groups()
    site = {"NFS_SERVER": server, "NFS_EXPORT": export, "SMP_PATH": str(tmp_path / "smp"),
            "IMAGES2": str(tmp_path / "images2"), "TEMPLATE_URL": http.url("/volstack-tiny.qcow2"),
            "TEMPLATE_SHA256": hashlib.sha256(image.read_bytes()).hexdigest(), "INTERNAL_SITES": "127.0.0.1/32"}
    work = tmp_path / "checkout"           # the reader's checkout: the tutorial runs .venv/bin/cs etc. from it
    work.mkdir()
    for venv in (".venv", ".venv-cloudmonkey"):
        (work / venv).symlink_to(ROOT / venv)
    script = ["PS4='+ $SECONDS '; set -ex"]      # -x: a failure shows the command that failed
    found = blocks(TUTORIAL.read_text())
    for heading, code in found:
        if heading == "Your site":
            assigned = re.findall(r"^(\w+)=", code, re.M)
            assert sorted(assigned) == sorted(site), "the test gives a value for each variable of 'Your site'"
            code = "".join(f"{k}={v}\n" for k, v in site.items())
        script.append(f"echo '### {heading}'\n{code}")
    assert len(found) >= 15 and any(h == "Your site" for h, _ in found)

    env = {k: v for k, v in os.environ.items() if not k.startswith("CLOUDSTACK_")}
    env["HOME"] = str(tmp_path)            # cloudmonkey's cache and history
    env["VOLSTACK_TEMPLATE_DIR"] = str(image.parent)     # where `volstack up` finds the built-in template
    up = subprocess.Popen([VOLSTACK, "up", "--data-dir", "volstack-data", "--port", "0"], cwd=work, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for_keys(up)
        run = subprocess.run(["bash", "-c", "\n".join(script)], cwd=work, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True, timeout=600)
        (tmp_path / "tutorial.log").write_text(run.stdout)
        assert run.returncode == 0, f"the tutorial failed (all of it: {tmp_path / 'tutorial.log'}):\n{run.stdout[-8000:]}"
        ini = configparser.ConfigParser()
        ini.read(work / "volstack-data" / "cloudstack.ini")
        api = _client(ini["cloudstack"])
        assert api.listVirtualMachines() == {} and api.listVolumes(name="data1") == {}
        assert list(nfs_dir.iterdir()) == []                 # the deleted volume left nothing on the NFS pool
        stores = {s["name"]: s for s in api.listImageStores()["imagestore"]}
        assert stores["local-images"]["readonly"] is True and stores["images2"]["readonly"] is False
        for name in ("volstack-tiny", "tiny-url"):           # migrated into the second store
            t = api.listTemplates(templatefilter="all", name=name)["template"][0]
            assert t["isready"] and (tmp_path / "images2" / f"{t['id']}.qcow2").exists(), name
        direct = api.listTemplates(templatefilter="self", name="tiny-direct")["template"][0]
        assert direct["directdownload"] and not (tmp_path / "images2" / f"{direct['id']}.qcow2").exists()
        assert [p["state"] for p in api.listStoragePools(name="nfs1")["storagepool"]] == ["Up"]
    finally:
        _destroy_guests(work)             # guests outlive `volstack up`: leave none behind
        up.send_signal(signal.SIGTERM)
        up.wait(timeout=60)
        http.stop()


def _destroy_guests(work):
    ini = configparser.ConfigParser()
    if ini.read(work / "volstack-data" / "cloudstack.ini"):
        api = _client(ini["cloudstack"])
        for vm in api.listVirtualMachines().get("virtualmachine", []):
            api.destroyVirtualMachine(id=vm["id"], expunge=True)


def _wait_for_keys(proc, timeout=120):
    buf, end = b"", time.monotonic() + timeout
    while b"export CLOUDSTACK_SECRET=" not in buf:
        assert time.monotonic() < end and proc.poll() is None, f"volstack up did not start: {buf!r}"
        if select.select([proc.stdout], [], [], 0.5)[0]:
            buf += os.read(proc.stdout.fileno(), 4096)


def _client(section):
    from cs import CloudStack
    return CloudStack(endpoint=section["endpoint"], key=section["key"], secret=section["secret"], timeout=60,
                      poll_interval=0.1, fetch_result=True)
