"""The local user and the log reader: secrets searched for in every response any client of the stack received,
every log line, the command lines of volstack's processes (server, agent, guests) and every file under the data
dir. Holes 6 and 7: world-readable database, logs and images; session keys in clear; a malformed cephx key
echoed to agent.log by librados. This module runs last (conftest orders it) so that it sees what the others did."""
import base64
import os
import stat
from pathlib import Path

import pytest

from attackkit import builtin_template, error_of, offering, zone_id

RUN_LAST = True


@pytest.fixture(scope="module")
def secrets_seen(stack, tenants):
    """Exercise what handles secrets, then collect them: {label: secret}."""
    alice = tenants.alice
    login = stack.login("alice", alice.password, alice.domain_path)
    assert login.status_code == 200, login.text
    session_key = login.json()["loginresponse"]["sessionkey"]
    vm = alice.api.deployVirtualMachine(zoneid=zone_id(stack), templateid=builtin_template(stack), name="sec-vm",
                                        serviceofferingid=offering(stack, "service", "Small Instance"))["virtualmachine"]
    # a key librados cannot decode (base64 of the wrong structure), to unreachable monitors
    cephx = base64.b64encode(os.urandom(20)).decode()
    stack.bad_cephx = error_of(stack.call(
        stack.root, "createStoragePool", scope="zone", zoneid=zone_id(stack), hypervisor="KVM", name="bad-ceph",
        provider="DefaultPrimary", url=f"rbd://volstack:{cephx.replace('+', '-').replace('/', '_')}@127.0.0.1:9/rbd"))
    found = {"session key of alice": session_key, "cephx key": cephx,
             "server key": (stack.data / "volstack.key").read_text().strip(),
             "agent token": (stack.agent_state / "token").read_text().strip(),
             "root API secret": stack.env["CLOUDSTACK_SECRET"], "admin password": stack.admin_password}
    for t in tenants.made:
        found[f"API secret of {t.name}"], found[f"password of {t.name}"] = t.secret, t.password
    yield found
    stack.call(stack.root, "destroyVirtualMachine", id=vm["id"], expunge=True)


def test_a_malformed_cephx_key_is_refused_before_librados_sees_it(stack, secrets_seen):
    code, text = stack.bad_cephx
    assert code == 431 and "is not a cephx key" in text and secrets_seen["cephx key"] not in text, (code, text)
    assert not stack.root.listStoragePools(name="bad-ceph")


def _leaks(text: str, secrets: dict) -> list[str]:
    return [label for label, secret in secrets.items() if secret and secret in text]


# where a secret is the answer itself: the keys a user asks for, the session key of a login
_ANSWERS = ("registeruserkeysresponse", "getuserkeysresponse", "loginresponse")


def test_no_response_carries_a_secret_it_was_not_asked_for(stack, secrets_seen):
    assert len(stack.responses) > 10
    bad = [(body[:200], _leaks(body, secrets_seen)) for body in stack.responses
           if not any(a in body[:40] for a in _ANSWERS) and _leaks(body, secrets_seen)]
    assert not bad, bad


def test_no_log_line_carries_a_secret(stack, secrets_seen):
    logs = {p: text for p, text in stack.logs().items() if p != stack.stdout_path}   # stdout: the operator's keys
    assert stack.log_path in logs and stack.data / "agent.log" in logs
    leaks = {str(p): _leaks(text, secrets_seen) for p, text in logs.items() if _leaks(text, secrets_seen)}
    assert not leaks, leaks


def test_no_process_command_line_carries_a_secret(stack, secrets_seen):
    cmdlines = {}
    for pid in stack.pids():
        try:
            cmdlines[pid] = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            pass
    assert any("qemu" in c for c in cmdlines.values()), cmdlines      # the guest is among them
    leaks = {pid: _leaks(c, secrets_seen) for pid, c in cmdlines.items() if _leaks(c, secrets_seen)}
    assert not leaks, leaks


def test_no_other_local_user_can_read_anything_under_the_data_dir(stack, secrets_seen):
    """Directories 0700, files 0600 (no group or other bit at all): the database and its -wal/-shm, logs, keys,
    disk images, agent state, consoles."""
    open_to_others = []
    for root, dirs, files in os.walk(stack.data):
        for name in [*dirs, *files, ""] if root == str(stack.data) else [*dirs, *files]:
            path = Path(root) / name
            st = path.lstat()
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & 0o077:
                open_to_others.append(f"{oct(stat.S_IMODE(st.st_mode))} {path.relative_to(stack.data.parent)}")
    kinds = {p.name for p in stack.data.rglob("*")}
    assert {"volstack.db", "agent.log", "token", "volstack.key"} <= kinds
    assert any(p.suffix == ".qcow2" or p.name.startswith("tmpl-") for p in (stack.data / "primary").iterdir())
    assert not open_to_others, open_to_others


def test_the_database_holds_no_secret_in_clear(stack, secrets_seen):
    """Even to its owner (a backup, a copied -wal): session keys hashed, passwords hashed, API and cephx secrets
    encrypted with the server key, which is not in the database."""
    files = [p for p in stack.data.glob("volstack.db*") if p.is_file()]
    assert any(p.name == "volstack.db-wal" for p in files) or files
    leaks = {p.name: _leaks(p.read_bytes().decode("latin-1"), secrets_seen) for p in files}
    assert not any(leaks.values()), leaks
