"""Query building, ranking, and the double's Vast search semantics, through the SDK's own parser."""

import pytest
from conftest import REPO
from vastai.api.query import offers_alias, offers_fields, offers_mult, parse_query

from volt_ansible import backends
from volt_ansible import spec as spec_mod
from volt_ansible.backends import vast
from volt_ansible.errors import VoltError
from volt_ansible.local import offers

SPEC = spec_mod.load(REPO / "group_vars/all.yml").instance


def test_query_is_the_sdk_language_for_the_spec():
    q = vast.query(SPEC)
    assert q == ("gpu_name=RTX_5090 num_gpus=1 cpu_cores>=128 cpu_ram>=64 disk_space>=250 cuda_vers>=12.8 dph<=0.2 reliability>=0.95")
    parsed = parse_query(q, {}, offers_fields, offers_alias, offers_mult)
    assert parsed["gpu_name"] == {"eq": "RTX 5090"}
    assert parsed["cpu_ram"] == {"gte": 64000.0}  # GB typed, MB sent
    assert parsed["cuda_max_good"] == {"gte": "12.8"}
    assert parsed["dph_total"] == {"lte": "0.2"}


def test_rank_price_then_more_cores_then_reliability():
    o = [
        {"id": 1, "dph_total": 0.18, "cpu_cores": 128, "reliability": 0.99},
        {"id": 2, "dph_total": 0.18, "cpu_cores": 256, "reliability": 0.96},
        {"id": 3, "dph_total": 0.15, "cpu_cores": 64, "reliability": 0.90},
        {"id": 4, "dph_total": 0.18, "cpu_cores": 256, "reliability": 0.99},
    ]
    assert [x["id"] for x in vast.rank(o)] == [3, 4, 2, 1]


def test_double_applies_the_parsed_query_like_vast():
    q = parse_query(vast.query(SPEC), {"verified": {"eq": True}, "rentable": {"eq": True}}, offers_fields, offers_alias, offers_mult)
    q["order"] = [["dph_total", "asc"], ["cpu_cores", "desc"]]
    got = offers.search(q, rented_offer_ids=set())
    assert [o["id"] for o in got] == [31003, 31002, 31001]
    assert all(f.ok(o) for o in got for f in vast.filters(SPEC))
    # every catalogue offer left out fails at least one filter or a default
    left_out = [o for o in offers.CATALOGUE if o["id"] not in {g["id"] for g in got}]
    assert all(not o["verified"] or any(not f.ok(o) for f in vast.filters(SPEC)) for o in left_out)


def test_double_hides_rented_offers_and_honours_limit_and_bid_type():
    q = {"gpu_name": {"eq": "RTX 5090"}, "rented": {"eq": False}, "order": [["dph_total", "asc"]], "limit": 2}
    got = offers.search(q, rented_offer_ids={31004})
    assert 31004 not in [o["id"] for o in got] and len(got) == 2
    bid = offers.search({"type": "bid", "gpu_name": {"eq": "RTX 5090"}}, set())
    assert all(o["dph_total"] == o["min_bid"] for o in bid)


def test_backends_by_name_and_what_only_the_local_one_does(monkeypatch, tmp_path):
    with pytest.raises(VoltError, match=r"--backend 'gcp' is not a backend: use vast or local"):
        backends.named("gcp")
    monkeypatch.setattr(vast, "_secrets", {})
    monkeypatch.setenv("VAST_API_KEY", "k")
    with backends.open_backend("vast", tmp_path) as b:
        assert b.name == "vast" and b.instance_vars(tmp_path, print) == {}
        assert backends.kind("vast").data_root(tmp_path, tmp_path) is None
        with pytest.raises(VoltError, match="only the local one can"):
            b.preempt(1)
