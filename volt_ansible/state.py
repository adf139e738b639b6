"""`.volt/state.json`: what this campaign rented, written atomically, never overwritten when unreadable."""

from __future__ import annotations

import json
import os
import secrets
import time
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, Field, ValidationError

from volt_ansible.errors import VoltError
from volt_ansible.fileops import atomic_write

STATE_VERSION = 1


def volt_dir() -> Path:
    """The campaign's private directory: $VOLT_DIR, else ./.volt (the project root)."""
    return Path(os.environ.get("VOLT_DIR", ".volt")).absolute()


class Instance(BaseModel):
    id: int
    offer_id: int
    backend: Literal["vast", "local"]
    gpu_name: str = ""
    ssh_host: str = ""
    ssh_port: int = 0
    dph_total: float = 0.0
    status: str = "created"
    created_at: float = Field(default_factory=time.time)
    ready: bool = False  # running, price checked, SSH works with the campaign key
    unreachable_since: float | None = None  # first failed SSH check since the last good one
    bid_dph: float | None = None  # interruptible: its bid now (None: on-demand)
    machine_id: int | None = None  # the host machine of its offer (a replacement avoids the machine it lost)
    paused_since: float | None = None  # stopped in the API (outbid, or its host stopped it), its disk kept: when first seen
    # Ansible variables this instance needs beyond group_vars (the local world sets its own repo/toolchain).
    host_vars: dict[str, Any] = {}


class LedgerEntry(BaseModel):
    instance_id: int
    backend: str
    dph_total: float  # $/h from started_at (until the first change)
    started_at: float
    ended_at: float | None = None
    end_reason: str = ""
    on_demand_dph: float | None = None  # interruptible: the same offer on demand, what the saving is counted against
    storage_dph: float = 0.0  # what its disk bills per hour while it is stopped (the offer's storage_cost x disk / 730 h)
    # (at, $/h from then on, why): a bid raised ("bid"), the instance paused by an outbid ("paused": storage_dph), running again
    changes: list[tuple[float, float, str]] = []

    def segments(self, now: float | None = None) -> list[tuple[float, float, float, str]]:
        """(from, to, $/h, why) over the entry's life; why is "" for the first segment."""
        end = self.ended_at if self.ended_at is not None else (now or time.time())
        points = [(self.started_at, self.dph_total, ""), *sorted(self.changes)]
        out = []
        for i, (at, dph, why) in enumerate(points):
            to = min(end, points[i + 1][0]) if i + 1 < len(points) else end
            if to > at:
                out.append((at, to, dph, why))
        return out

    def cost(self, now: float | None = None) -> float:
        return sum((to - at) / 3600.0 * dph for at, to, dph, _ in self.segments(now))

    def paused_s(self, now: float | None = None) -> float:
        return sum(to - at for at, to, _, why in self.segments(now) if why == "paused")

    def saving(self, now: float | None = None) -> float | None:
        """What the same running hours would have cost on demand, minus what this cost (storage while paused included)."""
        if self.on_demand_dph is None:
            return None
        running_s = sum(to - at for at, to, _, why in self.segments(now) if why != "paused")
        return running_s / 3600.0 * self.on_demand_dph - self.cost(now)

    def change(self, dph: float, why: str, at: float | None = None) -> None:
        self.changes.append((time.time() if at is None else at, dph, why))


class Home(BaseModel):
    """What the last backup found at home (runs/<campaign>/home.json), recorded by `watch`."""

    at: float
    files: int = 0
    bytes: int = 0
    newest_epoch: dict[str, Any] | None = None  # {job, epoch, path}
    missing: list[str] = []  # required outputs not home yet


class Recovery(BaseModel):
    """A replacement under way: set when the instance is found lost, cleared once training resumed."""

    reason: str
    backend: Literal["vast", "local"]
    lost_id: int
    started_at: float = Field(default_factory=time.time)
    pricing: Literal["on-demand", "interruptible"] | None = None  # the replacement's, when not the spec's (volt_interruptible.fallback)
    rescue_from: int | None = None  # the lost instance still has its disk: the replacement is filled from it, host to host
    rescue_state: str = ""  # that instance's: "paused" or "running" (recovery.rescue_source)
    rescued: bool = False  # that copy is done (a resumed recovery does not copy again)
    rescued_bytes: int = 0
    avoid_machine: int | None = None  # where the lost one ran (outbid there, preempted, gone): not rented again


class Creating(BaseModel):
    """A create about to be sent: written before the API call, so a controller killed at any point leaves a trace
    that the next command reconciles against the account's instance list (adopt it, or find nothing and forget it)."""

    offer_id: int
    backend: Literal["vast", "local"]
    label: str  # unique per attempt: finds exactly this create in the listing
    at: float = Field(default_factory=time.time)
    gpu_name: str = ""
    dph_total: float = 0.0
    host_vars: dict[str, Any] = {}
    bid_dph: float | None = None  # interruptible: the bid sent
    machine_id: int | None = None
    on_demand_dph: float | None = None
    storage_dph: float = 0.0

    def entry(self, instance_id: int) -> LedgerEntry:
        """The ledger entry of the instance this create made."""
        return LedgerEntry(instance_id=instance_id, backend=self.backend, dph_total=self.dph_total, started_at=self.at,
                           on_demand_dph=self.on_demand_dph, storage_dph=self.storage_dph)


class State(BaseModel):
    version: int = STATE_VERSION
    campaign: str = ""
    # Random per checkout, part of every label: instances of this campaign rented from another checkout are never touched.
    owner: str = ""
    creating: Creating | None = None
    instance: Instance | None = None
    # Instances lost to a preemption but still in the API: kept (their disk may hold files newer than
    # the backup) until `finish` or `destroy --lost` removes them.
    retired: list[Instance] = []
    ledger: list[LedgerEntry] = []
    home: Home | None = None
    recovery: Recovery | None = None
    stopped: str = ""  # why the campaign was stopped (budget), empty while it runs
    # What the built binaries accept, as their --help says (recorded by status/watch): {job: can resume}. A stage
    # whose binary cannot resume restarts from epoch 1 after a preemption; recovery sends it no epoch checkpoint.
    resume: dict[str, bool] = {}
    epoch_s: dict[str, float] = {}  # {job: mean epoch time seen}: what a restart of that stage costs per epoch
    # Hours the curriculum still needed at the last watch round that could time an epoch: while the instance is paused (no
    # jobs to read) a raised bid must still fit the budget over them.
    remaining_h: float | None = None

    def open_entry(self, instance_id: int) -> LedgerEntry | None:
        for e in self.ledger:
            if e.instance_id == instance_id and e.ended_at is None:
                return e
        return None

    def total_cost(self, now: float | None = None) -> float:
        return sum(e.cost(now) for e in self.ledger)

    def owned(self) -> list[Instance]:
        return [i for i in [self.instance, *self.retired] if i is not None]

    def label_prefix(self) -> str:
        """Every instance this checkout rents for this campaign carries a label starting with this."""
        return f"volt:{self.campaign}:{self.owner}:"

    def new_label(self) -> str:
        self.owner = self.owner or secrets.token_hex(4)
        return self.label_prefix() + secrets.token_hex(3)

    def backends(self) -> set[str]:
        """The backends this campaign has rented on (where to look for instances it may have lost track of)."""
        found = {e.backend for e in self.ledger} | {i.backend for i in self.owned()}
        return found | ({self.creating.backend} if self.creating else set())


def path() -> Path:
    return volt_dir() / "state.json"


def load() -> State:
    """The saved state; an empty one when none exists. Refuses (never replaces) a corrupt file."""
    p = path()
    if not p.exists():
        return State()
    try:
        data = json.loads(p.read_text())
        state = State.model_validate(data)
    except (json.JSONDecodeError, ValidationError, UnicodeDecodeError) as e:
        reason = str(e).splitlines()[0]
        raise VoltError(
            f"{p} is corrupt ({reason}); it was left untouched: check the Vast console for a running "
            f"instance, then move the file aside (mv {p} {p}.bad) to start over"
        ) from None
    if state.version > STATE_VERSION:
        raise VoltError(f"{p} was written by a newer volt-ansible (version {state.version}): upgrade volt-ansible")
    return state


def save(state: State) -> None:
    """Written atomically and durably (fileops.atomic_write): a crash leaves the old file or the new one, never half."""
    p = path()
    p.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    atomic_write(p, state.model_dump_json(indent=2), mode=0o600)
