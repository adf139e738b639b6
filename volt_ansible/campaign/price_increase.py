"""A host's pending price increase on the campaign's instance: accepted while the new price stays within dph_max (and
the budget's projection), rejected otherwise; either way recorded in the ledger and said in watch's round."""

from __future__ import annotations

import time

from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.backends import Backend
from volt_ansible.state import State


def new_dph(row: dict, gpus: int) -> float | None:
    """The row's new price in $/h (its GPU cost per second per GPU, plus disk and RAM), None when it has none."""
    gpu = row.get("new_gpu_costpersec")
    if not isinstance(gpu, int | float):
        return None
    return (float(gpu) * gpus + float(row.get("new_disk_ram_costpersec") or 0.0)) * 3600


def answer(state: State, backend: Backend, spec: spec_mod.Spec, spent_usd: float, remaining_h: float | None) -> list[str]:
    inst = state.instance
    if inst is None:
        return []
    rows = [r for r in backend.pending_price_increases() if r.get("contract_id") == inst.id]
    lines = []
    for row in rows:
        price = new_dph(row, spec.instance.num_gpus)
        if price is None:
            continue
        cap = spec.bid_max if inst.bid_dph is not None else spec.instance.dph_max
        budget = spec.watch.budget_usd
        over_budget = budget is not None and remaining_h is not None and spent_usd + remaining_h * price > budget
        accept = price <= cap and not over_budget
        backend.answer_price_increase(inst.id, accept)
        now = time.time()
        if accept:
            when = max(now, float(row.get("contract_end_date") or now))  # it applies from the contract's end, or now
            entry = state.open_entry(inst.id)
            if entry is not None:
                entry.change(price, "price increase", when)
            state.instance = inst.model_copy(update={"dph_total": price})
            state_mod.save(state)
            lines.append(f"price increase on instance {inst.id}: ${inst.dph_total:.4f} -> ${price:.4f}/h accepted (within ${cap:.4f}/h"
                         f"{' and the budget' if budget is not None else ''})")
        else:
            why = f"above ${cap:.4f}/h" if price > cap else f"the projection would pass the budget ${budget:.2f}"
            lines.append(f"price increase on instance {inst.id}: ${inst.dph_total:.4f} -> ${price:.4f}/h rejected ({why}); if the host "
                         "stops it at the contract's end, watch treats it as paused and replaces it after run_again_wait_s")
    return lines
