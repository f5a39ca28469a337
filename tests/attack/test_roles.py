"""The harness's roles are what they claim to be: who sees which accounts and domains."""


def test_each_role_sees_its_own_accounts_only(stack, tenants):
    alice, bob, dadmin = tenants.alice, tenants.bob, tenants.dadmin
    assert {a["name"] for a in alice.api.listAccounts(listall=True)["account"]} == {"alice"}
    assert {a["name"] for a in bob.api.listAccounts(listall=True)["account"]} == {"bob"}
    seen = {a["name"] for a in dadmin.api.listAccounts(listall=True)["account"]}
    assert {"alice", "dadmin"} <= seen and "bob" not in seen and "admin" not in seen
    everyone = {a["name"] for a in stack.root.listAccounts(listall=True)["account"]}
    assert {"alice", "bob", "dadmin", "admin"} <= everyone


def test_a_plain_user_gets_432_for_admin_commands(stack, tenants):
    status, body = stack.call(tenants.alice, "createDomain", name="nope")
    assert status == 432 and "createDomain does not exist or it is not available" in body["errortext"]
