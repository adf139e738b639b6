"""The local backend: the Vast API double (volt_ansible.local) on 127.0.0.1, spoken to through the real SDK, with
podman containers as instances and a local world (fixture repo, toolchain archive, data) instead of the internet."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from volt_ansible.backends.vast import VastApi
from volt_ansible.local import link, podman
from volt_ansible.local.double import LocalVast
from volt_ansible.local.server import DoubleServer
from volt_ansible.local.world import World


class LocalBackend(VastApi):
    name = "local"

    def __init__(self, volt_dir: Path):
        podman.require()
        self.double = LocalVast(volt_dir / "local")
        self._server = DoubleServer(self.double)
        try:
            super().__init__(self.double.api_key, self._server.url)
        except BaseException:
            self._server.close()
            raise

    def instance_vars(self, root: Path, progress: Callable[[str], None]) -> dict:
        link.check(link.Model.from_env())  # a bad VOLT_LOCAL_* value is one line here, before anything is rented
        progress("preparing the local world (fixture repo, toolchain archive)")
        self.double.world = World(root, self.double.dir)  # what the instances it creates mount
        return self.double.world.host_vars()

    @classmethod
    def data_root(cls, root: Path, volt_dir: Path) -> Path | None:
        return World(root, volt_dir / "local").publish_data()

    def preempt(self, instance_id: int) -> None:
        self.double.preempt(instance_id)

    def clean(self) -> int:
        return self.double.clean()

    def close(self) -> None:
        self._server.close()
