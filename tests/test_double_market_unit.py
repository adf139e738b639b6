"""The local double's bid, billing, copy and execute rules, without containers (the world itself: test_double_bids.py)."""

from __future__ import annotations

import pytest

from volt_ansible.errors import VoltError
from volt_ansible.local import bids, billing, copies, execute, paths

OFFER = {"min_bid": 0.081, "storage_cost": 0.15, "machine_id": 5003}


def test_who_wins_a_machine():
    assert bids.wins({"is_bid": False}, OFFER, 9.0)  # on-demand always has its machine
    assert not bids.wins({"is_bid": True, "bid": 0.08}, OFFER, None)  # below min_bid
    assert bids.wins({"is_bid": True, "bid": 0.081}, OFFER, None)
    assert not bids.wins({"is_bid": True, "bid": 0.12}, OFFER, 0.12)  # a tie does not take it from the competitor
    assert bids.winning_price(OFFER, None) == 0.081 and bids.winning_price(OFFER, 0.12) == 0.121


def test_billing_running_then_stopped():
    inst = {"dph_total": 0.36, "disk": 72}
    billing.open_account(inst, now=1000.0, loading_s=10.0)
    billing.accrue(inst, OFFER, 1005.0)  # still loading: free
    assert billing.totals(inst, OFFER, 1005.0)["total"] == 0
    billing.accrue(inst, OFFER, 1010.0 + 3600)
    inst["held"] = True
    t = billing.totals(inst, OFFER, 1010.0 + 3600 + 7200)
    assert t["compute"] == pytest.approx(0.36) and t["storage"] == pytest.approx(0.15 * 72 / 720 * 2)


@pytest.mark.parametrize(("given", "want"), [("/root/x", "/root/x"), ("root/x/", "/root/x/"), ("/a/../../etc", "/etc"), ("/", "/")])
def test_paths_are_normalised_inside_the_instance(given, want):
    assert paths.normal(given) == want


def test_a_symlink_on_the_way_is_refused(tmp_path):
    (tmp_path / "data").symlink_to("/")
    with pytest.raises(VoltError, match="goes through a symlink"):
        paths.on_host(tmp_path, "/data/etc/passwd")
    assert paths.on_host(tmp_path, "/root/f") == f"{tmp_path}/root/f"


@pytest.mark.parametrize("dst", ["/", "/root", "/root/", "//root", "/root/x/.."])
def test_copy_to_root_is_refused(dst):
    assert "breaks the instance's ssh folder" in copies.check({"src_id": "C.1", "dst_id": 2, "src_path": "/w/", "dst_path": dst})


def test_copy_ids():
    assert copies.check({"src_id": "C.1", "dst_id": "2", "src_path": "/w/", "dst_path": "/root/w/"}) == (1, 2, "/w/", "/root/w/")
    assert "between instances only" in copies.check({"src_id": "V.1", "dst_id": 2, "src_path": "/w", "dst_path": "/x"})
    assert "between instances only" in copies.check({"src_id": None, "dst_id": 2, "src_path": "/w", "dst_path": "/x"})


@pytest.mark.parametrize(("command", "opts", "found"), [
    ("du -sh /root", ["du", "-sh"], ["/root"]),
    ("du -d 2 /w", ["du", "--max-depth=2"], ["/w"]),
    ("ls -la -- -odd", ["ls", "-la"], ["-odd"]),
    ("ls '/a b; rm -rf /'", ["ls"], ["/a b; rm -rf /"]),
])
def test_execute_parses_into_argv(command, opts, found):
    assert execute.parse(command) == (opts, found)


@pytest.mark.parametrize("command", ["rm -rf /root", "du --files0-from=/etc/passwd /", "du -X /etc/shadow", "ls -L /", "sh -c ls", "ls $(id)x'"])
def test_execute_refuses_everything_else(command):
    with pytest.raises(VoltError):
        execute.parse(command)


def test_result_urls_need_no_key_but_the_rest_does(tmp_path):
    import requests

    from volt_ansible.local.double import LocalVast
    from volt_ansible.local.server import DoubleServer

    double = LocalVast(tmp_path / "local")
    server = DoubleServer(double)
    try:
        token = execute.new_token()
        assert requests.get(f"{server.url}/_results/{token}").status_code == 404  # not ready (or no such result)
        execute.write_result(double.dir / "results", token, "4\t/w\n")
        got = requests.get(f"{server.url}/_results/{token}")  # a plain GET, as the SDK polls it
        assert got.status_code == 200 and got.text == "4\t/w\n"
        assert requests.get(f"{server.url}/_results/..%2fapi_key").status_code == 401  # not a token: the keyed API
        assert requests.get(f"{server.url}/_test/copies").status_code == 401
        key = {"Authorization": f"Bearer {double.api_key}"}
        assert requests.get(f"{server.url}/_test/copies", headers=key).json() == {"copies": []}
        stale = requests.put(f"{server.url}/api/v0/instances/reject-price-increase/", json={"pending_price_increase_id": 5}, headers=key)
        assert stale.status_code == 404 and stale.json() == {"success": False, "error": "no_pending_price_increase"}
    finally:
        server.close()


def test_a_machine_with_a_competing_bid_lists_the_bid_that_wins_it():
    from volt_ansible.local import offers

    machine = next(o for o in offers.CATALOGUE if o["id"] == 31003)["machine_id"]
    listed = {o["id"]: o for o in offers.search({"type": "bid"}, set(), {str(machine): 0.5})}
    assert listed[31003]["min_bid"] == 0.501 and listed[31003]["dph_total"] == 0.501  # a bid search prices it at the winning bid
    assert listed[31002]["min_bid"] == 0.081  # the other machines as before
