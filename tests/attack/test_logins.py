"""Hole 4: twenty wrong passwords in four seconds, then the right one worked. Failures are slowed now, and after
incorrect.login.attempts.allowed the user is disabled until an administrator enables it (as CloudStack does)."""
import time

from agentproc import wait_until


def test_guessing_is_slowed_and_then_locks_the_user_until_an_admin_enables_it(stack, tenants):
    victim = tenants.make("guessed", "attack-d1")
    root, path = stack.root, victim.domain_path
    start = time.monotonic()
    for i in range(20):
        resp = stack.login("guessed", f"wrong-{i}", path)
        assert resp.status_code == 531 and "please provide valid credentials" in resp.text, resp.text
    # the right password straight after: refused (slowed down, or locked already)
    assert stack.login("guessed", victim.password, path).status_code == 531
    assert time.monotonic() - start < 30
    root.updateConfiguration(name="incorrect.login.attempts.allowed", value="3")
    try:

        def disabled():
            stack.login("guessed", "still-wrong", path)
            return root.listUsers(id=victim.user["id"], listall=True)["user"][0]["state"] == "disabled"
        wait_until("the guessed user to be disabled", disabled, timeout=60, interval=0.2)
        # disabled: the right password does not open it, whenever it comes, nor do its API keys
        resp = stack.login("guessed", victim.password, path)
        assert resp.status_code == 531, resp.text
        assert stack.call(victim, "listZones")[0] == 401
        event = [e for e in root.listEvents(listall=True, type="USER.DISABLE").get("event", [])
                 if e["resourceid"] == victim.user["id"]]
        assert event and "failed login attempts" in event[0]["description"], event
        # a domain admin of its domain enables it again; then the right password works at once
        assert tenants.dadmin.api.enableUser(id=victim.user["id"])["user"]["state"] == "enabled"
        assert stack.login("guessed", victim.password, path).status_code == 200
    finally:
        root.updateConfiguration(name="incorrect.login.attempts.allowed", value="5")


def test_a_good_login_starts_the_count_again(stack, tenants):
    user = tenants.make("slowed", "attack-d1")
    stack.root.updateConfiguration(name="incorrect.login.attempts.allowed", value="2")
    try:
        for _ in range(2):               # without the reset the second failure would be the second in a row
            assert stack.login("slowed", "wrong", user.domain_path).status_code == 531
            wait_until("the delay to pass", lambda: stack.login("slowed", user.password, user.domain_path)
                       .status_code == 200, timeout=10, interval=0.1)
        assert stack.root.listUsers(id=user.user["id"], listall=True)["user"][0]["state"] == "enabled"
    finally:
        stack.root.updateConfiguration(name="incorrect.login.attempts.allowed", value="5")
