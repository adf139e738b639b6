"""Vast's bids in the local double (reference: vast-interruptible.md): an interruptible instance runs while its bid
wins its machine: at least the offer's min_bid and above any competitor's bid on that machine. Outbid, it stops (its
processes killed, its disk kept) until it wins again (its bid raised, or the competitor gone)."""

from __future__ import annotations

STEP = 0.001  # $/h: what "Vast picks a winning bid" adds to a competitor's


def competitor(store: dict, machine_id: int) -> float | None:
    return (store.get("competitors") or {}).get(str(machine_id))


def winning_price(offer: dict, rival: float | None) -> float:
    """The lowest bid that runs on this machine now."""
    return round(max(offer["min_bid"], rival + STEP if rival is not None else 0.0), 4)


def wins(inst: dict, offer: dict, rival: float | None) -> bool:
    """An on-demand instance always has its machine; a bid needs min_bid and more than any competitor."""
    if not inst.get("is_bid"):
        return True
    bid = float(inst.get("bid") or 0.0)
    return bid >= offer["min_bid"] and (rival is None or bid > rival)


def states(inst: dict) -> dict:
    """Vast's state fields for the double's record. `held`: its container is kept stopped (stopped by the client, outbid,
    or a bid that never won); `intended`: running unless the client stopped it or the market did (an outbid reads
    cur_state == intended_status == next_state == "stopped", as dstack reads it); a start while still outbid makes it
    "running" again, and it waits, stopped, for its GPUs (scheduling)."""
    if not inst.get("held"):
        return {"cur_state": "running", "intended_status": "running", "next_state": "running"}
    return {"cur_state": "stopped", "intended_status": inst.get("intended", "stopped"), "next_state": "stopped"}
