"""The places an instance can be rented from, by the name state.json records."""

from __future__ import annotations

from pathlib import Path

from volt_ansible.backends.base import DEAD_STATUSES, Backend, is_paused
from volt_ansible.backends.local import LocalBackend
from volt_ansible.backends.vast import VastBackend
from volt_ansible.errors import VoltError

KINDS: dict[str, type[Backend]] = {"vast": VastBackend, "local": LocalBackend}

__all__ = ["DEAD_STATUSES", "KINDS", "Backend", "is_paused", "kind", "named", "open_backend"]


def named(value: str) -> str:
    """A backend name as given on the command line, checked."""
    if value not in KINDS:
        raise VoltError(f"--backend {value!r} is not a backend: use {' or '.join(KINDS)}")
    return value


def kind(name: str) -> type[Backend]:
    return KINDS[named(name)]


def open_backend(name: str, volt_dir: Path) -> Backend:
    """A client of the named backend (a context manager: closing it stops what it started)."""
    return kind(name)(volt_dir)
