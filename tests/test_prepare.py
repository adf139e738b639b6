"""playbooks/prepare.yml on a local-backend instance: bare instance -> GPU checked, both binaries built."""

from __future__ import annotations

import re

import pytest

pytestmark = pytest.mark.podman


def recap(stdout: str) -> dict[str, int]:
    m = re.search(r"^volt-\d+\s+: (.*)$", stdout, re.M)
    assert m, stdout[-3000:]
    return {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", m.group(1))}


def test_prepare_builds_both_binaries_then_changes_nothing(project):
    project.cli("provision")
    first = project.sh("ansible-playbook playbooks/prepare.yml", timeout=900)
    assert recap(first.stdout)["failed"] == 0 and recap(first.stdout)["changed"] > 0
    assert "Start cargo build (in the background" in first.stdout
    assert "Check the GPU, the driver and nvcc while it compiles" in first.stdout

    bins = project.cli("ssh", "--", "ls /root/volt-x/target/release/codebook-init /root/volt-x/target/release/train-vfn").stdout
    assert "codebook-init" in bins and "train-vfn" in bins
    # cuda_check put the local instance's real nvcc on PATH for non-login shells
    assert "release" in project.cli("ssh", "--", "nvcc --version").stdout

    second = project.cli("run", "prepare")
    assert "prepare ok: changed=0" in second.stdout
