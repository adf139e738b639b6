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
    """On the production default Rust path: the real rustup-init from the local world's copy of static.rust-lang.org."""
    project.cli("provision", VOLT_LOCAL_RUST="rustup")
    assert project.state()["instance"]["host_vars"]["rust_toolchain_method"] == "rustup"
    first = project.sh("ansible-playbook playbooks/prepare.yml", timeout=900)
    assert recap(first.stdout)["failed"] == 0 and recap(first.stdout)["changed"] > 0
    assert re.search(r"TASK \[rust_toolchain : Run rustup-init\][^\n]*\n(?:[^\n]*\n)*?changed: \[volt-", first.stdout), first.stdout[-4000:]
    shown = project.cli("ssh", "--", "/root/.cargo/bin/rustup show active-toolchain").stdout
    assert shown.startswith("stable-x86_64-unknown-linux-gnu"), shown
    assert "Start cargo build (in the background" in first.stdout
    # the build cache was empty, so the bootstrap started the build packages' apt in the background after its own
    history = project.cli("ssh", "--", "cat /var/log/apt/history.log").stdout
    assert re.search(r"Commandline: apt-get -qq -o DPkg::Lock::Timeout=\d+ install -y --no-install-recommends .*"
                     r"build-essential pkg-config libssl-dev\n", history), history
    assert "Check the GPU, the driver and nvcc while it compiles" in first.stdout

    bins = project.cli("ssh", "--", "ls /root/volt-x/target/release/codebook-init /root/volt-x/target/release/train-vfn").stdout
    assert "codebook-init" in bins and "train-vfn" in bins
    # cuda_check put the local instance's real nvcc on PATH for non-login shells
    assert "release" in project.cli("ssh", "--", "nvcc --version").stdout

    second = project.cli("run", "prepare")
    assert "prepare ok: changed=0" in second.stdout
