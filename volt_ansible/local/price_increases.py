"""A host's pending price increases in the local double: the rows of GET /api/v0/instances/pending-price-increases/
(shape: vastai/api/price_increase.py, list_pending), accepted or rejected one row at a time; one nobody answered
applies at its due time, evaluated lazily whenever the double's state is read."""

from __future__ import annotations

from collections.abc import Callable

PUBLIC = ("pending_price_increase_id", "contract_id", "host_id", "new_gpu_costpersec", "new_disk_ram_costpersec", "new_bwu_cost",
          "new_bwd_cost", "new_platform_fee", "old_gpu_costpersec", "old_disk_ram_costpersec", "old_bwu_cost", "old_bwd_cost",
          "old_platform_fee", "contract_end_date", "ask_end_date", "created_at")


def post(store: dict, inst: dict, offer: dict, new_dph: float, due: float, now: float) -> dict:
    """A host raises the price of `inst` to new_dph $/h from `due` on (unless rejected first)."""
    store["next_price_increase_id"] = store.get("next_price_increase_id", 7001) + 1
    gpus = max(1, int(offer.get("num_gpus") or 1))
    row = {k: None for k in PUBLIC}
    row.update(pending_price_increase_id=store["next_price_increase_id"] - 1, contract_id=inst["id"],
               host_id=offer.get("host_id", offer["machine_id"]),
               new_gpu_costpersec=new_dph / 3600 / gpus, old_gpu_costpersec=float(inst["dph_total"]) / 3600 / gpus, created_at=now,
               new_dph=new_dph, due=due, status="pending")
    store.setdefault("price_increases", []).append(row)
    return row


def public(row: dict) -> dict:
    return {k: row.get(k) for k in PUBLIC}


def pending(store: dict) -> list[dict]:
    return [r for r in store.get("price_increases", []) if r["status"] == "pending"]


def find(store: dict, pid: int) -> dict | None:
    return next((r for r in pending(store) if r["pending_price_increase_id"] == pid), None)


def apply_due(store: dict, now: float, apply: Callable[[dict, float], None]) -> None:
    """Every pending row past its due time takes effect at that time (apply(row, when))."""
    for row in sorted(pending(store), key=lambda r: r["due"]):
        if row["due"] <= now:
            apply(row, row["due"])
            row["status"] = "applied"
