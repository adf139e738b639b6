"""The side commands: the local backend's test hooks and the controller's build cache."""

from __future__ import annotations

from volt_ansible import buildcache
from volt_ansible import state as state_mod
from volt_ansible.campaign.context import open_backend
from volt_ansible.errors import VoltError
from volt_ansible.local import image


def local_preempt(instance: int | None = None) -> int:
    """Kill a local instance's container the way a host preempts it; return its id."""
    state = state_mod.load()
    iid = instance if instance is not None else (state.instance.id if state.instance else None)
    if iid is None:
        raise VoltError("no instance to preempt: name one, or provision first")
    with open_backend("local") as backend:
        backend.preempt(iid)
    return iid


def _local_instance(instance: int | None, what: str) -> int:
    state = state_mod.load()
    iid = instance if instance is not None else (state.instance.id if state.instance else None)
    if iid is None:
        raise VoltError(f"no instance to {what}: name one, or provision first")
    return iid


def local_outbid(instance: int | None = None, price: float | None = None) -> tuple[int, float]:
    """A competing bid takes a local interruptible instance's machine: it stops, its disk kept; return (id, that bid)."""
    iid = _local_instance(instance, "outbid")
    with open_backend("local") as backend:
        return iid, backend.double.outbid(iid, price)


def local_competitor_leaves(instance: int | None = None) -> list[int]:
    """The competitor on a local instance's machine leaves: the instances outbid there run again; return their ids."""
    iid = _local_instance(instance, "give its machine back to")
    with open_backend("local") as backend:
        return backend.double.competitor_leaves(iid)


def local_clean() -> int:
    """Remove every container the local double started for this project; return how many."""
    with open_backend("local") as backend:
        return backend.clean()


def local_image(recipe: str) -> str:
    """Build (once, then cached) a test-host image; return its name."""
    if recipe not in image.RECIPES:
        raise VoltError(f"no image recipe {recipe!r}: choose one of {', '.join(image.RECIPES)}")
    return image.ensure(image.RECIPES[recipe])


def cache_dir(given: str | None) -> str:
    return given or buildcache.default_dir()


def cache_entries(where: str) -> list[buildcache.Entry]:
    return buildcache.entries(where)


def cache_clear(where: str, key: str | None, everything: bool) -> list[buildcache.Entry]:
    return buildcache.clear(where, key, everything)
