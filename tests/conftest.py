"""Shared fixtures: a throwaway copy of the project, and the CLI run in it as a user would; the suite's scheduling
(markers, timeouts, xdist groups, slowest first) is in tests/schedule.py."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import buildshare
import pytest
import yaml
from procs import run_group
from schedule import pytest_collection_modifyitems, pytest_runtest_logreport, pytest_sessionfinish  # noqa: F401 (hooks)

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ["ansible.cfg", "group_vars", "inventory", "playbooks", "roles"]
# Every instance a project rents is this far away (volt_ansible/local/link.py), as a real one is 20-150 ms away:
# a round trip too many shows up here as it would there. VOLT_TEST_RTT_MS=0 runs the suite on a free link.
RTT_MS = os.environ.get("VOLT_TEST_RTT_MS", "80")


def _machine_cpu_s() -> float:
    """The whole machine's busy CPU seconds so far (user+nice+system+irq+softirq+steal): the containers' work included,
    so a figure per command holds only while nothing else runs."""
    fields = Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]
    return (sum(int(x) for x in fields[:8]) - int(fields[3]) - int(fields[4])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Project:
    root: Path
    home: Path  # short: ssh ControlPath sockets live under it and must fit 108 bytes
    reuse_build: bool = False  # @pytest.mark.reuse_build: binaries from tests/buildshare.py

    @property
    def build_cache(self) -> Path:
        return self.home / ".cache" / "volt-ansible" / "builds"

    def build_features(self) -> list[str]:
        """The cargo features this project's spec builds (its own or the role's default)."""
        spec = yaml.safe_load((self.root / "group_vars" / "all.yml").read_text())
        default = yaml.safe_load((self.root / "roles" / "repo_build" / "defaults" / "main.yml").read_text())
        return spec.get("repo_build_features", default["repo_build_features"])

    @property
    def volt_dir(self) -> Path:
        return self.root / ".volt"

    def env(self, **extra: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLT_", "VAST_", "ANSIBLE_"))}
        env["PATH"] = f"{Path(sys.executable).parent}:{env.get('PATH', '')}"
        env["HOME"] = str(self.home)  # no stray ~/.vast_api_key, no shared ~/.ansible
        env.update(buildshare.FIXED_GIT_DATES)  # the same fixture sources give the same commit (tests/buildshare.py)
        env["VOLT_LOCAL_RTT_MS"] = RTT_MS
        if os.environ.get("VOLT_TEST_TIMING"):  # and per playbook task, in .volt/logs (a callback that only prints)
            env["ANSIBLE_CALLBACKS_ENABLED"] = "ansible.posix.profile_tasks"
        env.update(extra)
        return env

    def cli(self, *args: str, check: bool = True, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        t0, cpu0 = time.monotonic(), _machine_cpu_s()
        compiles = args[:1] == ("up",) or args[:2] == ("run", "prepare")
        shared = buildshare.building(self.build_cache, self.build_features()) if self.reuse_build and compiles else nullcontext()
        if self.reuse_build:
            buildshare.seed(self.build_cache)
        with shared:
            proc = run_group([sys.executable, "-m", "volt_ansible", *args], cwd=self.root, env=self.env(**env), timeout=timeout)
        if compiles:  # shared at once, not at the test's end; only what a build made (a test may plant fake entries)
            buildshare.harvest(self.build_cache)
        if os.environ.get("VOLT_TEST_TIMING"):  # where a slow e2e test spends its time: seconds (and CPU-s) per CLI command
            with open(os.environ["VOLT_TEST_TIMING"], "a") as f:
                f.write(f"{time.monotonic() - t0:7.1f} s {_machine_cpu_s() - cpu0:7.1f} CPU-s {' '.join(args)}\n")
        if check and proc.returncode != 0:
            raise AssertionError(f"volt-ansible {' '.join(args)} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def sh(self, cmd: str, check: bool = True, timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
        proc = run_group(cmd, shell=True, cwd=self.root, env=self.env(**env), timeout=timeout)
        if check and proc.returncode != 0:
            raise AssertionError(f"{cmd} -> {proc.returncode}\n{proc.stdout}\n{proc.stderr}")
        return proc

    def spec(self, **sections: dict) -> None:
        """Merge changes into this project's group_vars/all.yml (e.g. volt_provision={...})."""
        path = self.root / "group_vars" / "all.yml"
        data = yaml.safe_load(path.read_text())
        for key, value in sections.items():
            if isinstance(value, dict) and isinstance(data.get(key), dict):
                data[key].update(value)
            else:
                data[key] = value
        path.write_text(yaml.safe_dump(data, sort_keys=False))

    def double(self):
        from volt_ansible.local.double import LocalVast

        return LocalVast(self.volt_dir / "local")

    def state(self) -> dict:
        import json

        return json.loads((self.volt_dir / "state.json").read_text())


def make_project(root: Path) -> Project:
    """A throwaway project at root (created): the project files copied, the code and the doubles linked, a short HOME."""
    root.mkdir(parents=True)
    home = Path(tempfile.mkdtemp(prefix="vh-", dir="/tmp"))
    for name in PROJECT_FILES:
        src = REPO / name
        if src.is_dir():
            shutil.copytree(src, root / name, symlinks=True)
        elif src.exists():
            shutil.copy2(src, root / name)
    for shared in ("volt_ansible", "tests", "molecule"):  # code, the Volt-X fixture, the nvidia-smi double
        (root / shared).symlink_to(REPO / shared)
    return Project(root, home)


@pytest.fixture
def project(tmp_path: Path, request):
    """A throwaway project. @pytest.mark.reuse_build: its build cache starts with the binaries an earlier test built
    from the same fixture sources (tests/buildshare.py), for tests that need them but do not test building."""
    p = make_project(tmp_path / "project")
    p.reuse_build = request.node.get_closest_marker("reuse_build") is not None
    if p.reuse_build:
        buildshare.seed(p.build_cache)
    yield p
    if (p.volt_dir / "local").exists():
        p.double().clean()
    buildshare.harvest(p.build_cache)
    shutil.rmtree(p.home, ignore_errors=True)


@pytest.fixture
def make_host(request):
    """make_host(recipe='host', volumes=[...]) -> a running SSH test host, removed after the test."""
    from testhost import start, stop, unique_name

    started = []

    def factory(recipe: str = "host", volumes: list[str] | None = None):
        host = start(unique_name("vt", f"{request.node.name}-{len(started)}"), recipe, volumes)
        started.append(host)
        return host

    yield factory
    for h in started:
        stop(h)
