from support import client


def test_list_zones_on_both_databases(server_any_db):
    api = client(server_any_db)
    z = api.createZone(name="z1", networktype="Advanced")["zone"]
    res = api.listZones(name="z1")
    assert res["count"] == 1 and res["zone"][0]["id"] == z["id"]
