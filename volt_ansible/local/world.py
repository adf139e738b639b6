"""What a local instance gets instead of the internet: the Volt-X fixture as a git repo, this
machine's Rust toolchain as an archive on a download server, its real nvcc, and an nvidia-smi double
for the rented GPU. The repo and the toolchain are read-only mounts: like GitHub and
static.rust-lang.org for a real instance, they reach it over its own network, not the operator's uplink. Its apt
goes through the controller's package cache (local/aptcache.py: a setting mounted at /etc/apt/apt.conf.d/), as a
real instance's goes to a mirror next to it."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.local import aptcache, rustdist, toolchain
from volt_ansible.spec import SPEC_FILE, read

GIT_MOUNT = "/srv/git"
RUST_MOUNT = "/srv/rust-dist"
FIXTURE = Path("tests/fixtures/volt-x")
NVIDIA_SMI = Path("molecule/resources/nvidia-smi")
CUDA = Path("/usr/local/cuda")
# How a local instance gets Rust: "archive" (this machine's toolchain packed, the default) or "rustup" (the real
# rustup-init from a local copy of static.rust-lang.org, local/rustdist.py), from the renting command's environment.
RUST_ENV = "VOLT_LOCAL_RUST"
# The instance's image (local/image.py), from the renting command's environment: "bare" (the default: what
# nvidia/cuda:*-devel has, so the roles install python3, git, a C toolchain ... with apt) or "dev" (those already
# there: only for a test about something else, which says why).
IMAGE_ENV = "VOLT_LOCAL_IMAGE"
IMAGES = ("bare", "dev")


def rust_method() -> str:
    method = os.environ.get(RUST_ENV, "") or "archive"
    if method not in ("archive", "rustup"):
        raise VoltError(f"{RUST_ENV}={method!r}: choose archive (the packed toolchain, the default) or rustup (the real rustup-init)")
    return method


def image_recipe() -> str:
    name = os.environ.get(IMAGE_ENV, "") or "bare"
    if name not in IMAGES:
        raise VoltError(f"{IMAGE_ENV}={name!r}: choose bare (like nvidia/cuda:*-devel, the roles install what it lacks: the "
                        "default) or dev (python3, git and a C toolchain already there), or unset it")
    return name


@dataclass
class World:
    root: Path  # the project root (fixture and doubles live in the repo)
    local_dir: Path  # <VOLT_DIR>/local

    @property
    def git_dir(self) -> Path:
        return self.local_dir / "git"

    def publish_fixture(self) -> str:
        """Commit the fixture's current sources into a bare repo that instances mount read-only."""
        if not shutil.which("git"):
            raise VoltError("git is not installed: apt-get install git (the local world serves Volt-X as a git repo)")
        src = self.root / FIXTURE
        if not (src / "Cargo.toml").exists():
            raise VoltError(f"the Volt-X fixture is missing at {src}: run from the volt-ansible project root")
        bare = self.git_dir / "volt-x.git"
        git = ["git", f"--git-dir={bare}", f"--work-tree={src}", "-c", "user.name=volt-ansible", "-c", "user.email=volt@localhost"]
        if not bare.exists():
            subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(bare)], check=True)
        subprocess.run([*git, "add", "-A"], check=True, capture_output=True)
        if subprocess.run([*git, "diff", "--cached", "--quiet"]).returncode != 0 or not (bare / "refs/heads/main").exists():
            subprocess.run([*git, "commit", "-q", "-m", "Volt-X fixture"], check=True, capture_output=True)
        return f"file://{GIT_MOUNT}/volt-x.git"

    def gpu_conf(self, instance_id: int, offer: dict) -> Path:
        conf = self.local_dir / "gpu" / f"{instance_id}.conf"
        conf.parent.mkdir(parents=True, exist_ok=True)
        name = offer["gpu_name"] if offer["gpu_name"].startswith("NVIDIA") else f"NVIDIA GeForce {offer['gpu_name']}"
        conf.write_text(
            f'GPU_NAME="{name}"\nGPU_COUNT={offer["num_gpus"]}\nMEMORY_MIB={offer["gpu_ram"]}\n'
            f"DRIVER={offer['driver_version']}\nCUDA={offer['cuda_max_good']}\n"
        )
        return conf

    def volumes(self, instance_id: int, offer: dict) -> list[str]:
        if rust_method() == "rustup":
            rust = f"{rustdist.ensure_tree()}:{rustdist.MOUNT}:ro"
        else:
            archive = toolchain.ensure_archive()
            rust = f"{archive}:{RUST_MOUNT}/{archive.name}:ro"
        vols = [f"{self.git_dir}:{GIT_MOUNT}:ro", rust, f"{self.root / NVIDIA_SMI}:/usr/bin/nvidia-smi:ro",
                f"{self.gpu_conf(instance_id, offer)}:/etc/nvidia-smi-double.conf:ro"]
        if CUDA.exists():
            real = CUDA.resolve()  # like a Vast SSH session: nvcc present under /usr/local/cuda-*, not on PATH
            vols.append(f"{real}:{real}:ro")
        apt_proxy, _ = aptcache.ensure()  # the package mirror next to the instance (a proxy that may have restarted)
        vols.append(f"{apt_proxy}:{aptcache.MOUNT}:ro")
        return vols

    def publish_data(self) -> Path:
        """The fixture's tiny training data, laid out where group_vars' volt_data sources point."""
        gen = self.local_dir / "data" / "generated"
        if not (gen / "data").exists():
            subprocess.run([sys.executable, str(self.root / FIXTURE / "make_data.py"), str(gen)], check=True, capture_output=True)
        root = self.local_dir / "data" / "VoltData"
        spec = read(self.root / SPEC_FILE)
        for item in spec.get("volt_data", {}).get("items", []):
            src = gen / item["dest"]
            if item.get("enabled", True) and src.is_file():
                dst = root / item["src"]
                dst.parent.mkdir(parents=True, exist_ok=True)
                if not dst.exists():
                    shutil.copy2(src, dst)
        return root

    def host_vars(self) -> dict:
        image_recipe()  # a bad VOLT_LOCAL_IMAGE is one line here, before anything is rented
        aptcache.ensure()  # so is a package cache that cannot start
        if rust_method() == "rustup":
            rust = rustdist.role_vars()
        else:
            archive = toolchain.ensure_archive()
            rust = {"rust_toolchain_method": "archive", "rust_toolchain_archive": f"file://{RUST_MOUNT}/{archive.name}",
                    "rust_toolchain_archive_sha256": toolchain.archive_sha256(archive)}
        return {"repo_build_repo": self.publish_fixture(), **rust, "data_sync_local_root": str(self.publish_data())}
