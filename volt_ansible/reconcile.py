"""The state against the account's instance list: adopt the instance an interrupted create made, destroy any instance
this checkout rented for the campaign and lost track of, and name the campaign's instances rented from elsewhere.

After this, every instance billing under this checkout's labels is one the state owns: a controller killed at any
point (before the create request, after Vast answered, before the state write) or an SDK retry of a create that
had succeeded leaves exactly one instance, recorded."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from volt_ansible import state as state_mod
from volt_ansible.backends import Backend
from volt_ansible.state import Instance, LedgerEntry, State


@dataclass
class Seen:
    adopted: int | None = None
    destroyed: list[int] = field(default_factory=list)
    foreign: list[dict] = field(default_factory=list)  # this campaign's label from another checkout: shown, never touched

    def lines(self) -> list[str]:
        return [f"instance {r['id']} (label {r.get('label')}, {r.get('actual_status')}, ${float(r.get('dph_total') or 0):.3f}/h) "
                f"is this campaign's but was rented from another checkout: not touched; destroy it there or in the Vast console"
                for r in self.foreign]


def _label(row: dict) -> str:
    return str(row.get("label") or "")


def run(state: State, backend: Backend, say: Callable[[str], None]) -> Seen:
    rows = backend.instances()
    seen = Seen()
    owned = {i.id for i in state.owned()}
    mine = sorted((r for r in rows if state.owner and _label(r).startswith(state.label_prefix())), key=lambda r: r["id"])
    c = state.creating
    if c is not None and c.backend == backend.name:
        match = [r for r in mine if _label(r) == c.label and r["id"] not in owned]
        if match and state.instance is None:
            row = match[0]
            state.instance = Instance(id=row["id"], offer_id=c.offer_id, backend=c.backend, gpu_name=c.gpu_name, dph_total=c.dph_total,
                                      created_at=c.at, host_vars=c.host_vars, bid_dph=c.bid_dph,
                                      machine_id=c.machine_id)
            state.ledger.append(c.entry(row["id"]))
            owned.add(row["id"])
            seen.adopted = row["id"]
            say(f"instance {row['id']} was created by a run that stopped before recording it: adopted, nothing is rented twice")
        state.creating = None
        state_mod.save(state)
    for row in (r for r in mine if r["id"] not in owned):
        say(f"instance {row['id']} (label {_label(row)}) was rented by this campaign but is not in {state_mod.path()}: "
            "destroying it so it stops billing")
        if backend.destroy(row["id"]) and not any(e.instance_id == row["id"] for e in state.ledger):
            now = time.time()
            state.ledger.append(LedgerEntry(instance_id=row["id"], backend=backend.name, dph_total=float(row.get("dph_total") or 0),
                                            started_at=float(row.get("start_date") or now), ended_at=now, end_reason="stray: destroyed"))
        seen.destroyed.append(row["id"])
        state_mod.save(state)
    campaign = f"volt:{state.campaign}:"
    seen.foreign = [r for r in rows if _label(r).startswith(campaign) and r not in mine]
    return seen
