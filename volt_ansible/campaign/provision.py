"""Offers, the plan, and renting: what to rent and getting it to "running, SSH works"."""

from __future__ import annotations

from volt_ansible import rent
from volt_ansible import spec as spec_mod
from volt_ansible.campaign.context import Progress, open_backend, project_root, quiet, reconciled
from volt_ansible.errors import VoltError
from volt_ansible.state import Instance, State


def offers(backend: str, limit: int | None = None) -> list[dict]:
    spec = spec_mod.load()
    with open_backend(backend) as b:
        found = b.search(spec.instance, limit)
        if not found:
            raise VoltError(f"no offer matches the spec: {b.explain_no_match(spec.instance)}")
        return found


def plan(backend: str, offer_id: int | None = None) -> rent.Plan:
    spec = spec_mod.load()
    with open_backend(backend) as b:
        return rent.choose_priced(b, spec, offer_id)


def resume(spec: spec_mod.Spec, state: State, progress: Progress = quiet) -> Instance:
    """Finish bringing up the recorded instance whose rent was interrupted."""
    assert state.instance is not None
    with open_backend(state.instance.backend) as b:
        return rent.resume(b, spec, state, progress)


def rent_new(backend: str, spec: spec_mod.Spec, state: State, offer_id: int | None = None, progress: Progress = quiet,
             avoid_machine: int | None = None) -> Instance:
    root = project_root()
    with open_backend(backend) as b:
        return rent.rent(b, spec, state, root, offer_id, progress, avoid_machine)


def provision(backend: str, offer_id: int | None = None, progress: Progress = quiet) -> Instance:
    spec = spec_mod.load()
    state, _ = reconciled()
    if state.instance is not None and not state.instance.ready:  # adopted after an interrupted create, or a rent cut short
        return resume(spec, state, progress)
    if state.instance is not None:
        raise VoltError(f"instance {state.instance.id} ({state.instance.backend}) is already provisioned: use it, or `volt-ansible destroy` it first")
    return rent_new(backend, spec, state, offer_id, progress)
