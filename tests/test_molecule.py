"""Every role's molecule scenarios, run as a user would (`molecule test` in the role directory)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import REPO

SCENARIOS = sorted(p.parent for p in REPO.glob("roles/*/molecule/*/molecule.yml"))


@pytest.mark.podman
@pytest.mark.parametrize("scenario", SCENARIOS, ids=lambda p: f"{p.parents[1].name}:{p.name}")
def test_molecule_scenario(scenario: Path):
    role_dir = scenario.parents[1]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
           "CONTAINERS_CONF": str(REPO / "volt_ansible/local/containers.conf"), "ANSIBLE_NOCOLOR": "1", "NO_COLOR": "1"}
    proc = subprocess.run([str(Path(sys.executable).parent / "molecule"), "test", "-s", scenario.name], cwd=role_dir, env=env,
                          capture_output=True, text=True, timeout=1500)
    assert proc.returncode == 0, f"molecule test failed in {role_dir.name}/{scenario.name}:\n{proc.stdout[-8000:]}\n{proc.stderr[-4000:]}"
