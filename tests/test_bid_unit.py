"""The bid of an interruptible instance, decided before anything is rented: auto from the offer's min_bid, the caps,
and the one-line refusals (no min_bid to bid from, a cap below the bid, a fixed bid no offer can win)."""

from __future__ import annotations

import copy

import pytest
import yaml
from conftest import REPO

from volt_ansible import rent, spec
from volt_ansible.errors import VoltError

DEFAULTS = yaml.safe_load((REPO / "group_vars/all.yml").read_text())


def spec_with(bid, **interruptible):
    data = copy.deepcopy(DEFAULTS)
    data["volt_instance"].update(pricing="interruptible", bid_dph=bid)
    data["volt_interruptible"].update(interruptible)
    return spec.parse(data)


class Offers:
    """A backend with a fixed listing: bid searches list min_bid as the price, on-demand ones dph_total (as Vast does)."""

    def __init__(self, *offers):
        self.offers = offers

    def search(self, s, limit=None):
        bid = s.pricing == "interruptible"
        rows = [dict(o, dph_total=o["min_bid"] if bid and "min_bid" in o else o["dph_total"]) for o in self.offers]
        return sorted([o for o in rows if o["dph_total"] <= s.dph_max], key=lambda o: o["dph_total"])

    def explain_no_match(self, s):
        return "nothing"


A = {"id": 1, "gpu_name": "RTX 5090", "dph_total": 0.18, "min_bid": 0.081}
B = {"id": 2, "gpu_name": "RTX 5090", "dph_total": 0.19, "min_bid": 0.095}


def test_auto_bids_min_bid_plus_margin_and_the_plan_shows_the_saving():
    p = rent.choose_priced(Offers(A, B), spec_with("auto"), None)
    assert (p.offer["id"], p.bid, p.dph, p.on_demand_dph) == (1, 0.0932, 0.0932, 0.18)  # 0.081 x 1.15, rounded to 4 places
    assert p.pricing == ("interruptible: bid $0.0932/h (min_bid $0.0810/h + 15%; raised up to $0.2000/h when outbid), on-demand "
                         "$0.1800/h: ~$34.72 saved over 400 GPU-hours (volt_interruptible.gpu_hours_estimate; storage while paused "
                         "and repeated epochs not counted)")


def test_a_fixed_bid_takes_the_cheapest_offer_it_can_win():
    p = rent.choose_priced(Offers(A, B), spec_with(0.09), None)
    assert (p.offer["id"], p.bid) == (1, 0.09)
    p = rent.choose(Offers(B, dict(A, min_bid=0.099)), spec_with(0.097), None)
    assert (p.offer["id"], p.bid) == (2, 0.097)  # A's min_bid is above the bid: B, though dearer


def test_on_demand_plans_have_no_bid():
    data = copy.deepcopy(DEFAULTS)
    p = rent.choose_priced(Offers(A, B), spec.parse(data), None)
    assert (p.bid, p.dph, p.pricing) == (None, 0.18, "")


@pytest.mark.parametrize(
    ("offers", "bid", "interruptible", "expected"),
    [
        ((dict(A, min_bid=None),), "auto", {}, "volt_instance.bid_dph auto: offer 1 shows no min_bid to bid from: set bid_dph"),
        ((A,), "auto", {"bid_max_dph": 0.09}, "volt_instance.bid_dph auto: offer 1's min_bid $0.0810/h + 15% = $0.0932/h is above "
                                              "the bid cap $0.0900/h"),
        ((A, B), 0.05, {}, "volt_instance.bid_dph $0.0500/h is below offer 1's min_bid $0.0810/h, where Vast creates the instance stopped"),
    ],
)
def test_bids_that_cannot_work_are_refused_before_renting(offers, bid, interruptible, expected):
    backend = Offers(*[{k: v for k, v in o.items() if v is not None} for o in offers])
    with pytest.raises(VoltError) as e:
        rent.choose(backend, spec_with(bid, **interruptible), None)
    assert "\n" not in str(e.value) and str(e.value).startswith(expected), str(e.value)


def test_the_ledger_bills_the_bid_running_storage_paused_and_counts_the_saving():
    from volt_ansible.ledger import interruptible_line
    from volt_ansible.state import LedgerEntry

    e = LedgerEntry(instance_id=1, backend="local", dph_total=0.10, started_at=0.0, on_demand_dph=0.20, storage_dph=0.01)
    e.change(0.01, "paused", at=1800)  # outbid: its disk bills storage
    e.change(0.12, "bid", at=3600)  # the bid raised: it runs again at the new bid
    assert e.cost(now=7200) == pytest.approx(0.5 * 0.10 + 0.5 * 0.01 + 1.0 * 0.12)
    assert e.paused_s(now=7200) == 1800
    assert e.saving(now=7200) == pytest.approx(1.5 * 0.20 - 0.175)  # the running hours on demand, minus all it cost
    assert interruptible_line(e, 0.12, now=7200) == ("interruptible: bid $0.1200/h (on demand $0.2000/h); paused 0.50 h "
                                                     "(storage $0.0050); saved $0.1250 so far against on demand")
    e.ended_at = 5400  # destroyed: nothing after it counts
    assert e.cost(now=99999) == pytest.approx(0.05 + 0.005 + 0.5 * 0.12)
    plain = LedgerEntry(instance_id=2, backend="local", dph_total=0.18, started_at=0.0)
    assert plain.cost(now=3600) == pytest.approx(0.18) and plain.saving(now=3600) is None


def test_an_outbid_reads_from_the_api_fields_and_the_next_bid_stays_under_the_cap():
    from volt_ansible import recovery
    from volt_ansible.backends import is_paused

    outbid = {"actual_status": "stopped", "cur_state": "stopped", "intended_status": "stopped", "next_state": "stopped", "is_bid": True}
    assert is_paused(outbid) and recovery.lost_reason(outbid, None, 7200, 0) == ""  # paused, not lost: its disk is there
    assert not is_paused({"actual_status": "running", "cur_state": "running"})
    assert not is_paused({"actual_status": "exited", "cur_state": "stopped"})  # exited never runs again: lost
    assert not is_paused(None)
    # the machine's winning bid + margin, at least a margin over the current bid, rounded up, never above the cap
    assert recovery.next_bid(0.0932, 0.0942, 0.15, 0.2) == 0.1084  # 0.0942 x 1.15 = 0.10833
    assert recovery.next_bid(0.0932, None, 0.15, 0.2) == 0.1072  # no winning bid shown: 0.0932 x 1.15 = 0.10718
    assert recovery.next_bid(0.19, 0.195, 0.15, 0.2) == 0.2
    assert recovery.next_bid(0.2, 0.3, 0.15, 0.2) is None  # at the cap: wait for the competitor to leave, then migrate


def test_a_price_increase_row_in_dollars_per_hour():
    from volt_ansible.campaign.price_increase import new_dph

    assert new_dph({"new_gpu_costpersec": 0.25 / 3600}, 1) == pytest.approx(0.25)
    assert new_dph({"new_gpu_costpersec": 0.1 / 3600, "new_disk_ram_costpersec": 0.02 / 3600}, 2) == pytest.approx(0.22)
    assert new_dph({"new_gpu_costpersec": None}, 1) is None


class Bids:
    """A backend that records the bids it is asked to change."""

    def __init__(self):
        self.changed = []

    def change_bid(self, instance_id, price):
        self.changed.append((instance_id, price))


@pytest.mark.parametrize(("budget", "raised_to", "cap_from"), [
    (None, 0.1084, "bid_max_dph"),  # no budget: the machine's winning bid 0.0942 + 15 %, under the cap 0.2
    (100.0, 0.1084, "bid_max_dph"),  # plenty of budget: the same
    (15.0, 0.1, "budget"),  # $10 spent, 50 h left: $0.10/h is all the budget allows
    (14.5, None, "budget"),  # $0.09/h allowed: below the bid already, so it stays (a bid is never lowered here)
])
def test_a_paused_bid_is_raised_only_as_far_as_the_budget_allows_over_the_hours_left(tmp_path, monkeypatch, budget, raised_to, cap_from):
    from volt_ansible.campaign import pause
    from volt_ansible.recovery import bid_within_budget
    from volt_ansible.state import Instance, LedgerEntry, State

    monkeypatch.setenv("VOLT_DIR", str(tmp_path))
    s = spec_with(0.0932, bid_max_dph=0.2)
    s = s.model_copy(update={"watch": s.watch.model_copy(update={"budget_usd": budget})})
    state = State(campaign="c", instance=Instance(id=7, offer_id=1, backend="local", dph_total=0.0932, bid_dph=0.0932),
                  ledger=[LedgerEntry(instance_id=7, backend="local", dph_total=10.0, started_at=0.0, ended_at=3600.0)],  # $10 spent
                  remaining_h=50.0)  # from the last round that timed an epoch
    backend = Bids()
    line = pause._raise_bid(state, backend, {"min_bid": 0.0942}, s, 0.0932)
    assert backend.changed == ([(7, raised_to)] if raised_to else []), line
    assert state.instance.bid_dph == (raised_to or 0.0932), line
    assert ("raised" in line) == bool(raised_to) and ("is at its cap" in line) == (not raised_to), line
    if cap_from == "budget":
        assert f"cap ${(budget - 10) / 50:.4f}/h" in line and "50.0 h left" in line and "volt_watch.budget_usd" in line, line
    else:
        assert "cap $0.2000/h, volt_interruptible.bid_max_dph" in line, line

    assert bid_within_budget(10.0, 3.0, 11.0) == 0.3333  # rounded down: never a bid the budget cannot pay
    assert bid_within_budget(10.0, None, 11.0) is None and bid_within_budget(10.0, 3.0, None) is None
    assert bid_within_budget(12.0, 3.0, 11.0) == 0.0
