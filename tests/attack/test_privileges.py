"""Hole 5: plain users used parameters CloudStack keeps for admins and saw fields CloudStack shows only to admins.
Who may pass a parameter or see a field is declared on it (Param/Field access); these are the ones seen abused."""
import pytest

from attackkit import builtin_template, error_of, offering, zone_id


@pytest.fixture(scope="module")
def alice_vm(stack, tenants):
    vm = tenants.alice.api.deployVirtualMachine(zoneid=zone_id(stack), templateid=builtin_template(stack),
                                                serviceofferingid=offering(stack, "service", "Small Instance"),
                                                name="priv-vm")["virtualmachine"]
    yield vm
    stack.call(stack.root, "destroyVirtualMachine", id=vm["id"], expunge=True)


def _refused(result, param, cmd):
    code, text = error_of(result)
    assert code == 531 and f"Parameter {param} of {cmd} is for the root administrator only" in text, (code, text)


def test_a_user_cannot_place_a_vm_on_a_host_or_boot_it_from_host_files(stack, tenants, alice_vm):
    host = stack.root.listHosts()["host"][0]["id"]
    stopped = tenants.alice.api.stopVirtualMachine(id=alice_vm["id"])["virtualmachine"]
    assert stopped["state"] == "Stopped"
    _refused(stack.call(tenants.alice, "startVirtualMachine", id=alice_vm["id"], hostid=host), "hostid",
             "startVirtualMachine")
    common = dict(zoneid=zone_id(stack), serviceofferingid=offering(stack, "service", "Small Instance"), startvm=False)
    _refused(stack.call(tenants.alice, "deployVirtualMachine", templateid=builtin_template(stack), hostid=host,
                        name="placed", **common), "hostid", "deployVirtualMachine")
    _refused(stack.call(tenants.alice, "deployVirtualMachine", rootdisksize=1, name="hostkernel",
                        **{"details[0].kernel": "/etc/shadow"}, **common), "details", "deployVirtualMachine")
    names = {v["name"] for v in tenants.alice.api.listVirtualMachines().get("virtualmachine", [])}
    assert not names & {"placed", "hostkernel"}
    assert tenants.alice.api.startVirtualMachine(id=alice_vm["id"])["virtualmachine"]["state"] == "Running"


def test_a_user_cannot_feature_templates_or_register_builtin_ones(stack, tenants):
    common = dict(url="http://127.0.0.1:9/t.qcow2", format="QCOW2", hypervisor="KVM", zoneid=zone_id(stack),
                  displaytext="t")
    _refused(stack.call(tenants.alice, "registerTemplate", name="feat", isfeatured=True, **common), "isfeatured",
             "registerTemplate")
    code, text = error_of(stack.call(tenants.alice, "registerTemplate", name="builtin", templatetype="BUILTIN",
                                     **common))
    assert code == 531 and "Only the root administrator may register BUILTIN templates" in text, (code, text)
    mine = tenants.alice.api.listTemplates(templatefilter="self").get("template", [])
    assert not {t["name"] for t in mine} & {"feat", "builtin"}


def test_a_user_cannot_take_a_username_already_used_in_its_domain(stack, tenants):
    first = tenants.make("dup-first", "attack-d1")
    second = tenants.make("dup-second", "attack-d1")
    code, text = error_of(stack.call(second, "updateUser", id=second.user["id"], username="dup-first"))
    assert code == 431 and "The user dup-first already exists in domain attack-d1" in text, (code, text)
    assert stack.login("dup-first", first.password, "/attack-d1").status_code == 200
    assert stack.root.listUsers(id=second.user["id"], listall=True)["user"][0]["username"] == "dup-second"


def test_users_do_not_see_where_their_volumes_and_vms_live(stack, tenants, alice_vm):
    vm = tenants.alice.api.listVirtualMachines(id=alice_vm["id"])["virtualmachine"][0]
    assert not {"hostid", "hostname"} & set(vm), vm
    assert {"hostid", "hostname"} <= set(stack.root.listVirtualMachines(id=alice_vm["id"], listall=True)
                                         ["virtualmachine"][0])
    vol = tenants.alice.api.listVolumes(virtualmachineid=alice_vm["id"])["volume"][0]
    hidden = {"path", "storageid", "storage", "storagetype", "hypervisor"}
    assert not hidden & set(vol), vol
    assert hidden <= set(stack.root.listVolumes(id=vol["id"], listall=True)["volume"][0])
    for filt in ("storageid", "hostid"):
        code, _ = error_of(stack.call(tenants.alice, "listVolumes", **{filt: stack.root.listHosts()["host"][0]["id"]
                                                                        if filt == "hostid" else
                                                                        stack.root.listStoragePools()["storagepool"][0]["id"]}))
        assert code == 531
    # listApis tells the same: the user's view of the command has neither the parameter nor the fields
    api = tenants.alice.api.listApis(name="startVirtualMachine")["api"][0]
    assert "hostid" not in {p["name"] for p in api["params"]} and "hostid" not in {f["name"] for f in api["response"]}


def test_template_urls_are_shown_to_their_owner_and_the_root_admin_only(stack, tenants):
    tiny = builtin_template(stack)
    assert "url" in stack.root.listTemplates(templatefilter="featured", id=tiny)["template"][0]
    seen = tenants.alice.api.listTemplates(templatefilter="featured", id=tiny)["template"][0]
    assert "url" not in seen and "status" not in seen, seen
    own = tenants.bob.api.registerTemplate(name="bobs", url="http://127.0.0.1:9/bobs.qcow2", format="QCOW2",
                                           hypervisor="KVM", zoneid=zone_id(stack), displaytext="b")["template"][0]
    assert own["url"] == "http://127.0.0.1:9/bobs.qcow2"
    assert tenants.bob.api.listTemplates(templatefilter="self", id=own["id"])["template"][0]["url"] == own["url"]


# CloudStack's ResponseView.Full fields (its *JoinDaoImpl classes), whatever volstack declares
FULL_VIEW_ONLY = {"listZones": {"dns1", "dns2", "internaldns1", "internaldns2", "ip6dns1", "ip6dns2", "guestcidraddress"},
                  "listVolumes": {"path", "storage", "storageid", "storagetype", "hypervisor", "clusterid", "podid"},
                  "listVirtualMachines": {"hostid", "hostname", "instancename"},
                  "listSnapshots": {"datastoreid", "datastorename", "datastoretype"}}


def test_no_list_shows_a_user_a_field_declared_for_admins(stack, tenants, alice_vm):
    """Every list command a plain user may call, on what it owns or may use: no field declared ROOT or DOMAIN
    (zone DNS and guest CIDR, volume paths and pools, VM hosts, snapshot stores...) is in the answer."""
    from volstack.api import commands  # noqa: F401
    from volstack.api.registry import API, USER
    required = {"templatefilter": "executable", "isofilter": "executable"}
    stack.root.updateZone(id=zone_id(stack), dns1="192.0.2.53", internaldns1="192.0.2.54")
    assert stack.root.listZones(id=zone_id(stack))["zone"][0]["internaldns1"] == "192.0.2.54"
    checked = set()
    for cmd in API.commands.values():
        if not (cmd.is_list and cmd.allowed(0) and cmd.view) or any(
                p.required and p.name not in required for p in cmd.params):
            continue          # (listTemplatePermissions needs an id: its view has no admin field)
        params = {p.name: required[p.name] for p in cmd.params if p.required and p.name in required}
        status, body = stack.call(tenants.alice, cmd.name, **params)
        assert status == 200, (cmd.name, status, body)
        hidden = {f.name for f in cmd.view.fields if f.access not in (USER, "owner")} | FULL_VIEW_ONLY.get(cmd.name, set())
        for item in body.get(cmd.view.key, []):
            assert not hidden & set(item), (cmd.name, hidden & set(item))
            checked.add(cmd.name)
    assert {"listZones", "listVolumes", "listVirtualMachines", "listTemplates"} <= checked, checked
