"""The physical floors of bench/time_to_gpu.py, measured on one fresh instance of the same image and link, each
step alone (nothing else running on the instance or the link):

- boot: the packages the product's bootstrap installs (roles/bootstrap's command set), one apt-get, then the build
  cache's entry for the binaries in one `ssh tar -xz` stream (what repo_build's restore sends);
- data: stage 1's input files, one `tar | ssh tar -x` stream (no compression: the checkpoints are incompressible);
- build: Rust (the same archive `up` unpacks) in parallel with the build packages' apt, then git clone + cargo build.

It runs boot first, so `build` finds git, zstd and the package lists already there: a lower floor, i.e. against
the product. floor_cold = max(build, data); floor_warm = max(boot, data).
"""

from __future__ import annotations

import shlex
import subprocess
from pathlib import Path

import yaml
from ttg_instances import destroy, provision, timed

REPO = Path(__file__).resolve().parents[1]


def boot_packages() -> list[str]:
    d = yaml.safe_load((REPO / "roles/bootstrap/defaults/main.yml").read_text())
    extra = {"python3-apt"} if d["bootstrap_python_apt"] else set()  # what the bootstrap adds when apt runs anyway
    return sorted(set(d["bootstrap_commands"].values()) | {d["bootstrap_ca_package"]} | extra)


def build_packages() -> list[str]:
    return yaml.safe_load((REPO / "roles/rust_toolchain/defaults/main.yml").read_text())["rust_toolchain_apt_packages"]


APT = "DEBIAN_FRONTEND=noninteractive apt-get -qq -o Dpkg::Options::=--force-unsafe-io"


def run(p, cfg, stage1_dir: Path, build_archive: Path) -> dict:
    """Seconds of each floor step; stage1_dir holds stage 1's inputs at their paths under ~/volt-x, build_archive is a
    build cache entry (the binaries and their stamp, what repo_build restores)."""
    inst, _, _ = provision(p, cfg["rate_mbit"], cfg["rtt_ms"], cfg["image"])
    try:
        out = {}
        boot = f"apt-get update -qq && {APT} install -y --no-install-recommends {shlex.join(boot_packages())} >/dev/null"
        out["boot_apt_s"], _ = timed([*inst.ssh, boot], "floor: bootstrap packages")
        with build_archive.open("rb") as f:
            out["boot_restore_s"], _ = timed([*inst.ssh, "mkdir -p /root/floor && tar -xzf - -C /root/floor"], "floor: restore the binaries",
                                              stdin=f)
        out["boot_s"] = out["boot_apt_s"] + out["boot_restore_s"]

        with subprocess.Popen(["tar", "-cf", "-", "-C", str(stage1_dir), "."], stdout=subprocess.PIPE) as tar:
            out["data_s"], _ = timed([*inst.ssh, "mkdir -p /root/floor && tar -xf - -C /root/floor"], "floor: stage-1 data", stdin=tar.stdout)

        archive = inst.host_vars["rust_toolchain_archive"].removeprefix("file://")
        build = (f"set -e; mkdir -p /opt/rust; ( zstd -dcq {shlex.quote(archive)} | tar -xf - -C /opt/rust ) & rust=$!; "
                 f"{APT} install -y --no-install-recommends {shlex.join(build_packages())} >/dev/null; wait $rust; "
                 f"export PATH=/opt/rust/bin:$PATH; git clone -q --depth 1 {shlex.quote(inst.host_vars['repo_build_repo'])} /root/vx; "
                 f"cd /root/vx && VOLT_FIXTURE_BUILD_DELAY_MS={int(cfg['build_s'] * 1000)} cargo build -q --release -p volt-learn "
                 "--features vfn-training --bin codebook-init --bin train-vfn")
        out["build_s"], _ = timed([*inst.ssh, build], "floor: Rust + build")
        out["floor_cold_s"] = max(out["build_s"], out["data_s"])
        out["floor_warm_s"] = max(out["boot_s"], out["data_s"])
        return out
    finally:
        destroy(p, inst)
