"""`watch --install` / `--uninstall` for this campaign: the service that keeps `volt-ansible watch` running."""

from __future__ import annotations

import os
import sys
from pathlib import Path

from volt_ansible import autostart
from volt_ansible import spec as spec_mod
from volt_ansible import state as state_mod
from volt_ansible.campaign.context import project_root
from volt_ansible.errors import VoltError


def target() -> autostart.Target:
    return autostart.Target(spec_mod.load().campaign, project_root(), sys.executable, autostart.passed_env(dict(os.environ)),
                            state_mod.volt_dir() / "watch.log")


def _vast_key_saved() -> bool:
    """The SDK's own key file (what `vastai set api-key` writes): a service does not inherit the shell's VAST_API_KEY."""
    config = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return (Path(config) / "vastai" / "vast_api_key").is_file() or (Path.home() / ".vast_api_key").is_file()


def install() -> list[str]:
    state = state_mod.load()
    backend = state.instance.backend if state.instance else os.environ.get("VOLT_BACKEND", "local")
    if backend == "vast" and not _vast_key_saved():
        raise VoltError("the watch service will not see this shell's VAST_API_KEY (no key goes into a unit file): save it once "
                        "with `vastai set api-key <key>` (the SDK's key file, mode 0600), then run `watch --install` again")
    return autostart.install(target())


def uninstall() -> list[str]:
    return autostart.uninstall(target())


def installed_note() -> str:
    t = target()
    return f" (service {t.name} installed)" if autostart.installed(t) else ""
