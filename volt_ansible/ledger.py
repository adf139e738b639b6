"""Money: what the campaign has spent, what the remaining stages will cost at the observed epoch time,
and whether that crosses the budget."""

from __future__ import annotations

from dataclasses import dataclass

from volt_ansible.jobs import Snapshot
from volt_ansible.state import LedgerEntry


@dataclass
class Projection:
    spent_usd: float
    remaining_h: float | None  # None until an epoch of the running stage has been timed
    dph: float
    epochs_done: int = 0  # the curriculum's finished epochs (every stage's)

    def per_epoch(self) -> str:
        return f"; ${self.spent_usd / self.epochs_done:.4f} per finished epoch" if self.epochs_done else ""

    @property
    def total_usd(self) -> float | None:
        return None if self.remaining_h is None else self.spent_usd + self.remaining_h * self.dph

    def line(self) -> str:
        if self.remaining_h is None:
            return f"cost so far ${self.spent_usd:.4f}{self.per_epoch()}; projection after the first timed epoch"
        return (f"cost so far ${self.spent_usd:.4f}{self.per_epoch()}; projected total ${self.total_usd:.4f} "
                f"({self.remaining_h:.2f} h more at ${self.dph:.3f}/h, from the observed epoch time)")


def remaining_hours(snap: Snapshot) -> float | None:
    """Hours left for the curriculum: the running stage's ETA plus every later unfinished stage's epochs at
    the running stage's seconds per epoch (the same model on more data: a floor, noted as such)."""
    stages = [j for j in snap.jobs if j.stage is not None]
    if stages and all(j.state == "done" for j in stages):
        return 0.0
    running = next((j for j in stages if j.state == "running" and j.eta_s is not None), None)
    if running is None or not running.epochs:
        return None
    left = max(1, running.epochs - (running.epoch or 0))
    per_epoch = running.eta_s / left if running.eta_s else 0.0
    later = sum(j.epochs or 0 for j in stages if (j.stage or 0) > (running.stage or 0) and j.state != "done")
    return (running.eta_s + later * per_epoch) / 3600.0


def epochs_done(snap: Snapshot) -> int:
    """The curriculum's finished epochs: a finished stage's all, a running or stopped one's last epoch summary."""
    total = 0
    for j in snap.jobs:
        if j.stage is None:
            continue
        total += (j.epochs or 0) if j.state == "done" else (j.progress.epochs_done or 0)
    return total


def over_budget(p: Projection, budget_usd: float | None) -> str:
    """Why the campaign must stop for money ("" when it need not)."""
    if budget_usd is None:
        return ""
    if p.spent_usd >= budget_usd:
        return f"spent ${p.spent_usd:.4f}, budget ${budget_usd:.4f} (volt_watch.budget_usd)"
    if p.total_usd is not None and p.total_usd > budget_usd:
        return f"projected ${p.total_usd:.4f} > budget ${budget_usd:.4f} (volt_watch.budget_usd; spent ${p.spent_usd:.4f})"
    return ""


def interruptible_line(entry: LedgerEntry, bid: float, now: float | None = None) -> str:
    """status: the bid against the on-demand price, the time paused and the storage it billed, the saving so far."""
    paused_s = entry.paused_s(now)
    storage = sum((to - at) / 3600.0 * dph for at, to, dph, why in entry.segments(now) if why == "paused")
    line = f"interruptible: bid ${bid:.4f}/h"
    if entry.on_demand_dph is not None:
        line += f" (on demand ${entry.on_demand_dph:.4f}/h)"
    line += f"; paused {paused_s / 3600:.2f} h (storage ${storage:.4f})"
    saved = entry.saving(now)
    if saved is not None:
        line += f"; saved ${saved:.4f} so far against on demand"
    return line
