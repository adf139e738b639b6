"""Renting one instance: choose the offer, create it, wait until it runs and SSH works, record it.
A failure after the create destroys what was made (nothing is on it yet, and it would bill)."""

from __future__ import annotations

import math
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from volt_ansible import crashpoints, notices, reconcile, ssh
from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.backends import DEAD_STATUSES, Backend, is_paused
from volt_ansible.errors import VoltError
from volt_ansible.state import Creating, Instance, State

Progress = Callable[[str], None]


def quiet(_: str) -> None:
    pass


@dataclass
class Plan:
    offer: dict
    dph: float  # what it bills while it runs: the bid of an interruptible instance
    bid: float | None = None  # None: on-demand
    on_demand_dph: float | None = None  # the same offer on demand (interruptible plans only; None: not listed)
    pricing: str = ""  # choose_priced's pricing_line: the plan's line for an interruptible instance

    @property
    def per_day(self) -> float:
        return self.dph * 24

    def pricing_line(self, spec: spec_mod.Spec) -> str:
        """Interruptible: the bid, where it comes from, the on-demand price and what the curriculum would save."""
        if self.bid is None:
            return ""
        i, floor = spec.interruptible, _min_bid(self.offer)
        source = (f"min_bid ${floor:.4f}/h + {i.bid_margin:.0%}" if spec.instance.bid_dph == "auto"
                  else f"volt_instance.bid_dph; min_bid ${floor:.4f}/h" if floor is not None else "volt_instance.bid_dph")
        line = f"interruptible: bid ${self.bid:.4f}/h ({source}; raised up to ${spec.bid_max:.4f}/h when outbid)"
        if self.on_demand_dph is None:
            return line + ", on-demand price not listed for this offer"
        saved = (self.on_demand_dph - self.bid) * i.gpu_hours_estimate
        return (line + f", on-demand ${self.on_demand_dph:.4f}/h: ~${saved:.2f} saved over {i.gpu_hours_estimate:g} GPU-hours "
                f"(volt_interruptible.gpu_hours_estimate; storage while paused and repeated epochs not counted)")


def bid_up(price: float) -> float:
    """A bid in $/h rounded up to a 1/100 cent: never under what it was computed from (float noise aside)."""
    return math.ceil(round(price * 1e4, 6)) / 1e4


def bid_down(price: float) -> float:
    """A price in $/h rounded down to a 1/100 cent: never over a cap it was computed from (float noise aside)."""
    return math.floor(round(price * 1e4, 6)) / 1e4


def _min_bid(offer: dict) -> float | None:
    v = offer.get("min_bid")
    return float(v) if isinstance(v, int | float) and not isinstance(v, bool) and v > 0 else None


def bid_for(spec: spec_mod.Spec, offer: dict) -> float | None:
    """The bid for an interruptible create on this offer in $/h (None: on-demand), or a one-line error before renting."""
    i = spec.instance
    if i.pricing != "interruptible":
        return None
    floor = _min_bid(offer)
    if i.bid_dph == "auto":
        if floor is None:
            raise VoltError(f"volt_instance.bid_dph auto: offer {offer.get('id')} shows no min_bid to bid from: "
                            "set bid_dph to a price in $/h, or pick another offer with --offer")
        bid = bid_up(floor * (1 + spec.interruptible.bid_margin))
        if bid > spec.bid_max:
            raise VoltError(f"volt_instance.bid_dph auto: offer {offer.get('id')}'s min_bid ${floor:.4f}/h + "
                            f"{spec.interruptible.bid_margin:.0%} = ${bid:.4f}/h is above the bid cap ${spec.bid_max:.4f}/h: raise "
                            "volt_interruptible.bid_max_dph (<= dph_max) or lower bid_margin")
        return bid
    assert i.bid_dph is not None
    if floor is not None and i.bid_dph < floor:
        # Vast would create it stopped, billing its disk and running nothing
        raise VoltError(f"volt_instance.bid_dph ${i.bid_dph:.4f}/h is below offer {offer.get('id')}'s min_bid ${floor:.4f}/h, where "
                        "Vast creates the instance stopped: raise bid_dph, use auto, or pick another offer with --offer")
    return float(i.bid_dph)


def _plan(spec: spec_mod.Spec, offer: dict) -> Plan:
    bid = bid_for(spec, offer)
    return Plan(offer, bid if bid is not None else offer["dph_total"], bid)


def storage_dph(offer: dict, disk_gb: float) -> float:
    """What the instance's disk bills per hour while it is stopped: the offer's storage_cost ($/GB/month) x disk / 720 h
    (30 days: the vastai CLI's own convention for storage per month)."""
    per_gb_month = offer.get("storage_cost")
    return float(per_gb_month) * disk_gb / 720.0 if isinstance(per_gb_month, int | float) and per_gb_month > 0 else 0.0


def on_demand_price(backend: Backend, spec: spec_mod.Spec, offer_id: int) -> float | None:
    """The offer's on-demand $/h (an interruptible search lists bid prices), whatever dph_max says; None if not listed."""
    anyprice = spec.instance.model_copy(update={"pricing": "on-demand", "dph_max": float("inf")})
    match = next((o for o in backend.search(anyprice) if o.get("id") == offer_id), None)
    return float(match["dph_total"]) if match else None


def choose_priced(backend: Backend, spec: spec_mod.Spec, offer_id: int | None, avoid_machine: int | None = None) -> Plan:
    """choose(), and for an interruptible plan the offer's on-demand price beside the bid (one more search)."""
    chosen = choose(backend, spec, offer_id, avoid_machine)
    if chosen.bid is not None:
        chosen.on_demand_dph = on_demand_price(backend, spec, chosen.offer["id"])
        chosen.pricing = chosen.pricing_line(spec)
    return chosen


def choose(backend: Backend, spec: spec_mod.Spec, offer_id: int | None, avoid_machine: int | None = None) -> Plan:
    found = [o for o in backend.search(spec.instance) if avoid_machine is None or o.get("machine_id") != avoid_machine]
    if offer_id is not None:
        match = next((o for o in found if o["id"] == offer_id), None)
        if match is None:
            raise VoltError(f"offer {offer_id} is not among the offers matching the spec: run `volt-ansible offers` and pick an ID it lists")
        return _plan(spec, match)
    if not found:
        raise VoltError(f"no offer matches the spec: {backend.explain_no_match(spec.instance)}")
    if spec.instance.pricing == "interruptible" and spec.instance.bid_dph != "auto":
        # a fixed bid: the cheapest offer it can win (the ones whose min_bid is above it would start stopped)
        winnable = [o for o in found if (_min_bid(o) or 0) <= float(spec.instance.bid_dph or 0)]
        return _plan(spec, (winnable or found)[0])
    return _plan(spec, found[0])


def record(state: State, **changes) -> None:
    assert state.instance is not None
    state.instance = state.instance.model_copy(update=changes)
    state_mod.save(state)


def close_ledger(state: State, instance_id: int, reason: str) -> None:
    entry = state.open_entry(instance_id)
    if entry:
        entry.ended_at = time.time()
        entry.end_reason = reason


def _abandon(backend: Backend, state: State, reason: str) -> VoltError:
    """Destroy a half-made instance (nothing is on it yet) so a failed provision never keeps billing."""
    assert state.instance is not None
    iid = state.instance.id
    try:
        backend.destroy(iid)
        outcome = f"instance {iid} was destroyed"
    except VoltError as e:
        outcome = f"destroying instance {iid} failed too ({e}): run `volt-ansible destroy --yes`"
        return VoltError(f"{reason}; {outcome}")
    close_ledger(state, iid, f"abandoned: {reason}")
    state.instance = None
    state_mod.save(state)
    return VoltError(f"{reason}; {outcome}")


def _wait_running(backend: Backend, state: State, timeout: float, interval: float, progress: Progress) -> dict:
    assert state.instance is not None
    iid, deadline, last = state.instance.id, time.monotonic() + timeout, "unknown"
    while True:
        row = backend.show(iid)
        last = (row or {}).get("actual_status") or "created"
        progress(f"instance {iid}: {last}")
        if row is None:
            raise _abandon(backend, state, f"instance {iid} vanished from the API while starting")
        if last == "running" and row.get("ssh_port"):
            return row
        if is_paused(row):  # a bid that lost at creation: it would wait stopped, billing its disk, until someone outbids less
            msg = row.get("status_msg") or "stopped"
            raise _abandon(backend, state, f"instance {iid} was created stopped ({msg}): the bid does not win this machine; raise "
                                           "volt_instance.bid_dph (or use auto), or rent another offer with --offer")
        if last in DEAD_STATUSES:
            msg = row.get("status_msg") or "no message"
            raise _abandon(backend, state,
                           f"instance {iid} went {last} while starting ({msg}): the host is unusable, provision again to rent another")
        if time.monotonic() > deadline:
            raise _abandon(
                backend,
                state,
                f"instance {iid} did not reach running in {timeout:g} s (last status {last}): "
                f"provision again, or raise volt_provision.running_timeout_s",
            )
        time.sleep(interval)


def _wait_ssh(backend: Backend, state: State, host: str, port: int, timeout: float, interval: float, progress: Progress) -> None:
    volt_dir, deadline = state_mod.volt_dir(), time.monotonic() + timeout
    pinned = False
    while time.monotonic() < deadline:
        if not pinned and ssh.banner(host, port):
            progress(f"sshd answers on {host}:{port}: pinning its host key")
            ssh.pin_host_key(volt_dir, host, port)
            pinned = True
        if pinned and ssh.can_login(volt_dir, host, port):
            return
        progress(f"waiting for sshd on {host}:{port}")
        time.sleep(min(interval, 1.0))
    raise _abandon(
        backend,
        state,
        f"sshd on {host}:{port} did not accept the campaign key within {timeout:g} s: provision again, or raise volt_provision.ssh_timeout_s",
    )


@contextmanager
def _uninterrupted() -> Iterator[None]:
    """Ctrl-C waits until the block is done: between "create" and "recorded" an interrupt would leave an
    instance that bills and that nothing knows about."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    caught: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, _frame: caught.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if caught:
        raise KeyboardInterrupt


def _bring_up(backend: Backend, spec: spec_mod.Spec, state: State, public_key: str, progress: Progress) -> Instance:
    """A recorded instance -> running, price re-checked, SSH with the campaign key; marked ready."""
    assert state.instance is not None
    iid = state.instance.id
    try:
        backend.attach_ssh(iid, public_key)
    except VoltError as e:
        raise _abandon(backend, state, str(e)) from None
    p = spec.provision
    row = _wait_running(backend, state, p.running_timeout_s, p.poll_interval_s, progress)
    live = float(row.get("dph_total") or 0)
    cap = spec.bid_max if spec.instance.pricing == "interruptible" else spec.instance.dph_max
    if live > cap:
        raise _abandon(backend, state, f"live price ${live:.3f}/h of instance {iid} is above the cap ${cap:.3f}/h")
    state.open_entry(iid).dph_total = live  # type: ignore[union-attr]
    try:
        host, port = ssh.check_host(row["ssh_host"]), int(row["ssh_port"])
    except (VoltError, ValueError) as e:
        raise _abandon(backend, state, f"instance {iid}: the API gave an unusable ssh address ({e})") from None
    record(state, ssh_host=host, ssh_port=port, dph_total=live, status="running")
    _wait_ssh(backend, state, host, port, p.ssh_timeout_s, p.poll_interval_s, progress)
    record(state, ready=True)
    return state.instance


def resume(backend: Backend, spec: spec_mod.Spec, state: State, progress: Progress = quiet) -> Instance:
    """Finish bringing up an instance whose rent was interrupted (recorded, not yet ready) on its backend."""
    assert state.instance is not None
    public_key = ssh.ensure_key(state_mod.volt_dir(), f"volt-ansible:{spec.campaign}")
    return _bring_up(backend, spec, state, public_key, progress)


def rent(backend: Backend, spec: spec_mod.Spec, state: State, root: Path, offer_id: int | None = None, progress: Progress = quiet,
         avoid_machine: int | None = None) -> Instance:
    """Rent the chosen offer as state.instance (recorded the moment it exists), wait for running + SSH. avoid_machine: a
    machine not to rent on (where a lost instance ran: outbid there, or its host failed)."""
    volt_dir, name = state_mod.volt_dir(), backend.name
    host_vars = backend.instance_vars(root, progress)
    public_key = ssh.ensure_key(volt_dir, f"volt-ansible:{spec.campaign}")
    chosen = choose_priced(backend, spec, offer_id, avoid_machine)
    bidding = f", bid ${chosen.bid:.4f}/h" if chosen.bid is not None else ""
    progress(f"renting offer {chosen.offer['id']} ({chosen.offer['gpu_name']}, ${chosen.dph:.3f}/h{bidding})")
    with _uninterrupted():
        # The intent goes to disk before the request: whatever kills this process from here on, the next command
        # finds the instance by its label (reconcile) instead of renting a second one.
        state.campaign = spec.campaign
        intent = Creating(offer_id=chosen.offer["id"], backend=name, label=state.new_label(), gpu_name=chosen.offer["gpu_name"],
                          dph_total=chosen.dph, host_vars=host_vars, bid_dph=chosen.bid, on_demand_dph=chosen.on_demand_dph,
                          storage_dph=storage_dph(chosen.offer, spec.instance.disk_gb), machine_id=chosen.offer.get("machine_id"))
        state.creating = intent
        state_mod.save(state)
        try:
            iid = backend.create(chosen.offer["id"], spec.instance, label=intent.label, bid=chosen.bid)
        except VoltError:
            reconcile.run(state, backend, notices.say)  # a create that succeeded before an error (a 502, a retry) is adopted
            if state.instance is None:
                raise
        else:
            crashpoints.here("create.record")
            state.instance = Instance(id=iid, offer_id=intent.offer_id, backend=name, gpu_name=intent.gpu_name,
                                      dph_total=intent.dph_total, host_vars=host_vars, created_at=intent.at, bid_dph=chosen.bid,
                                      machine_id=intent.machine_id)
            state.ledger.append(intent.entry(iid))
            state.creating = None
            state_mod.save(state)
            try:  # the SDK retried a create that had succeeded: the other copy goes (every later command sweeps too)
                reconcile.run(state, backend, notices.say)
            except VoltError as e:
                notices.say(f"instance {iid} is recorded; checking the account for a duplicate failed ({e}): the next command does it")
    return _bring_up(backend, spec, state, public_key, progress)
