"""What the campaign needs from a place that rents GPU machines: offers, instances, and the few things a backend
prepares itself. The campaign holds a Backend and never asks which one it is.

Rows are the Vast API's shapes (both backends speak it): an offer has id, gpu_name, num_gpus, cpu_cores, cpu_ram (MB),
disk_space, cuda_max_good, reliability, dph_total ($/h, the price a create is billed at), inet_up/inet_down (Mb/s); an
instance has id, label, actual_status, status_msg, ssh_host, ssh_port, dph_total (the live price), start_date."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.spec import InstanceSpec

DEAD_STATUSES = {"exited", "offline", "unknown"}  # an instance in these never becomes running again (SDK contract)


def is_paused(row: dict | None) -> bool:
    """Stopped in the API without this campaign stopping it (it never does: it destroys): an interruptible instance
    outbid (or whose bid lost at its creation), or an on-demand one its host stopped. Its disk stays; it can run again."""
    return row is not None and row.get("actual_status") not in DEAD_STATUSES and row.get("cur_state") == "stopped"


class Backend(ABC):
    name: str  # recorded with each instance in state.json: which backend to reopen it with

    @abstractmethod
    def search(self, spec: InstanceSpec, limit: int | None = None) -> list[dict]:
        """Offers matching the spec, cheapest first, then more CPU cores, then reliability."""

    @abstractmethod
    def explain_no_match(self, spec: InstanceSpec) -> str:
        """Name the spec filter that excludes the most rentable offers."""

    @abstractmethod
    def create(self, offer_id: int, spec: InstanceSpec, label: str, bid: float | None = None) -> int:
        """Rent the offer with the spec's image and disk under `label`, interruptible at `bid` $/h when given; return the id."""

    @abstractmethod
    def instances(self) -> list[dict]:
        """Every instance of the account; anything but a well-formed list is a VoltError, never "none"."""

    @abstractmethod
    def attach_ssh(self, instance_id: int, public_key: str) -> None: ...

    @abstractmethod
    def show(self, instance_id: int) -> dict | None:
        """The instance's row; None when the API no longer knows it."""

    @abstractmethod
    def destroy(self, instance_id: int) -> bool:
        """True when destroyed now, False when the API no longer knows it."""

    @abstractmethod
    def change_bid(self, instance_id: int, price: float) -> None:
        """Set an interruptible instance's bid ($/h): above the competitor's, an outbid instance runs again."""

    @abstractmethod
    def copy_direct(self, src_id: int, dst_id: int, src_path: str, dst_path: str) -> None:
        """Start copying a path from one instance to another, host to host (asynchronous; the source may be stopped)."""

    @abstractmethod
    def execute(self, instance_id: int, command: str) -> str:
        """The output of a limited command (ls, du) run on the instance, even a stopped one."""

    @abstractmethod
    def pending_price_increases(self) -> list[dict]:
        """The account's pending host price increases (rows: contract_id, new_/old_gpu_costpersec, ..., ask_end_date)."""

    @abstractmethod
    def answer_price_increase(self, instance_id: int, accept: bool) -> None: ...

    def instance_vars(self, root: Path, progress: Callable[[str], None]) -> dict:
        """Get ready to create an instance; return the Ansible host vars it needs beyond group_vars."""
        return {}

    @classmethod
    def data_root(cls, root: Path, volt_dir: Path) -> Path | None:
        """Where this backend's data sources live when not where group_vars says (None: where it says)."""
        return None

    def preempt(self, instance_id: int) -> None:
        raise VoltError(f"the {self.name} backend cannot preempt an instance on request: only the local one can")

    def clean(self) -> int:
        raise VoltError(f"the {self.name} backend has no containers of its own to remove: only the local one has")

    def close(self) -> None:  # noqa: B027 (nothing to stop unless the backend started something)
        return None

    def __enter__(self) -> Backend:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
