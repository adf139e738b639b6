"""What the local double bills an instance (reference: vast-interruptible.md): its price per hour while it runs (the
bid for an interruptible one, the on-demand $/h otherwise; the loading phase is free), its storage while it is
stopped (the offer's storage_cost $/GB/month x the instance's disk). The double's clock is time.time() plus an offset
a test may advance (LocalVast.advance_clock), so hours are billed without waiting for them."""

from __future__ import annotations

HOURS_PER_MONTH = 30 * 24  # the CLI's convention for storage per month (vastai/cli/commands/price_increase.py)
DEFAULT_DISK_GB = 10.0  # create_instance's default disk


def storage_per_hour(offer: dict, disk_gb: float | None) -> float:
    return float(offer.get("storage_cost") or 0.0) * float(disk_gb or DEFAULT_DISK_GB) / HOURS_PER_MONTH


def open_account(inst: dict, now: float, loading_s: float) -> None:
    inst["bill"] = {"since": now + loading_s, "compute": 0.0, "storage": 0.0, "running_s": 0.0, "stopped_s": 0.0}


def accrue(inst: dict, offer: dict, now: float) -> None:
    """Bill the time since the last accrual at the state the instance was in meanwhile; call before any change of its
    state or price."""
    bill = inst.get("bill")
    if bill is None or inst.get("destroyed"):
        return
    dt = now - bill["since"]
    if dt <= 0:  # still loading (or the clock read twice at once)
        return
    if inst.get("held") or inst.get("forced_status"):
        bill["storage"] += dt * storage_per_hour(offer, inst.get("disk")) / 3600
        bill["stopped_s"] += dt
    else:
        bill["compute"] += dt * float(inst["dph_total"]) / 3600
        bill["running_s"] += dt
    bill["since"] = now


def totals(inst: dict, offer: dict, now: float) -> dict:
    """The accrued cost up to now (the record itself is not changed)."""
    probe = {**inst, "bill": dict(inst.get("bill") or {"since": now, "compute": 0.0, "storage": 0.0, "running_s": 0.0, "stopped_s": 0.0})}
    accrue(probe, offer, now)
    b = probe["bill"]
    return {"compute": round(b["compute"], 8), "storage": round(b["storage"], 8), "total": round(b["compute"] + b["storage"], 8),
            "running_s": round(b["running_s"], 3), "stopped_s": round(b["stopped_s"], 3), "at": now}
