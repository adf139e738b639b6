"""roles/cuda_check against real SSH test hosts: every failure stops with the problem and its fix.

The hosts have no GPU: molecule/resources/nvidia-smi (real output formats, driven by
/etc/nvidia-smi-double.conf) stands in for the driver, molecule/resources/nvcc for an old toolkit, and
this machine's real /usr/local/cuda-13.0 for a current one.
"""

from __future__ import annotations

import json
import socket
import subprocess
import time
from pathlib import Path

import pytest
from conftest import REPO

from volt_ansible.local import podman

pytestmark = pytest.mark.podman

CUDA = Path("/usr/local/cuda-13.0")  # this machine's real toolkit (nvcc 13.0.88 + headers)
DEVEL_IMAGE = "nvidia/cuda:12.8.0-devel-ubuntu22.04"
RTX_5090 = {"GPU_NAME": "NVIDIA GeForce RTX 5090", "GPU_COUNT": 1, "MEMORY_MIB": 32607, "DRIVER": "570.124.04", "CUDA": "12.8"}
PLAY = """\
- name: Check the instance's GPU and CUDA toolkit
  hosts: volt
  gather_facts: false
  roles:
    - role: cuda_check
  tasks:
    - name: Report the facts
      ansible.builtin.debug:
        msg:
          gpu: "{{ cuda_check_gpu }}"
          nvcc_version: "{{ cuda_check_nvcc_version }}"
          home: "{{ cuda_check_home }}"
"""

needs_cuda = pytest.mark.skipif(not (CUDA / "bin/nvcc").exists(), reason=f"no real CUDA toolkit at {CUDA}")


def started(make_host, **kwargs):
    """make_host, then wait for sshd's banner: the container is up before sshd listens (~0.4 s)."""
    host = make_host(**kwargs)
    deadline = time.monotonic() + 30
    while True:
        try:
            with socket.create_connection(("127.0.0.1", host.port), timeout=2) as sock:
                if sock.recv(64).startswith(b"SSH-"):
                    return host
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"sshd of {host.name} never answered on port {host.port}")
        time.sleep(0.05)


def install_smi(host, **conf) -> None:
    """The nvidia-smi double where the NVIDIA container toolkit mounts the real one, and its config."""
    host.put((REPO / "molecule/resources/nvidia-smi").read_text(), "/usr/bin/nvidia-smi")
    host.put("".join(f'{k}="{v}"\n' for k, v in conf.items()), "/etc/nvidia-smi-double.conf", mode="0644")


def install_nvcc(host, home: str, version: str, headers: bool = True) -> None:
    """A toolkit dir whose nvcc is the double (real `nvcc --version` output of `version`)."""
    host.put((REPO / "molecule/resources/nvcc").read_text(), f"{home}/bin/nvcc")
    host.put(f"NVCC_VERSION={version}\n", "/etc/nvcc-double.conf", mode="0644")
    if headers:
        host.put("/* cuda.h */\n", f"{home}/include/cuda.h", mode="0644")


class Run:
    """One ansible-playbook run of the role, read through the json callback."""

    def __init__(self, proc: subprocess.CompletedProcess):
        self.proc = proc
        try:
            doc = json.loads(proc.stdout)
        except json.JSONDecodeError as e:
            raise AssertionError(f"no JSON from ansible-playbook ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-3000:]}") from e
        self.tasks = [(t["task"]["name"], next(iter(t["hosts"].values()), {})) for play in doc["plays"] for t in play["tasks"]]
        self.stats = next(iter(doc["stats"].values()))

    @property
    def failed(self) -> tuple[str, str]:
        """(task name, message) of the one failed task."""
        failed = [(name, r.get("msg", "")) for name, r in self.tasks if r.get("failed")]
        assert len(failed) == 1 and self.proc.returncode == 2, f"expected one failed task, got {failed}: {self.proc.stderr[-2000:]}"
        return failed[0]

    @property
    def facts(self) -> dict:
        return next(r["msg"] for name, r in self.tasks if name == "Report the facts")

    def task_names(self) -> list[str]:
        return [name for name, _ in self.tasks]


def run_role(host, **extravars) -> Run:
    host.env["ANSIBLE_STDOUT_CALLBACK"] = "ansible.posix.json"
    return Run(host.playbook(PLAY, extravars=extravars or None))


def assert_fails(run: Run, task: str, *parts: str) -> str:
    name, msg = run.failed
    print(f"{name}: {msg}")  # shown with -s, and with the failure
    assert name.endswith(task), f"failed in {name!r}, expected {task!r}: {msg}"
    for part in parts:
        assert part in msg, f"{part!r} not in the message:\n{msg}"
    assert "Report the facts" not in run.task_names()
    return msg


# --- the GPU and its driver -------------------------------------------------------------------------


def test_no_nvidia_smi(make_host):
    host = started(make_host)
    assert_fails(
        run_role(host), "GPU | Check that a GPU is visible",
        "no GPU visible", "nvidia-smi is not installed", "no GPU or no NVIDIA driver",
        "Fix: destroy it (volt-ansible destroy) and rent another", f"CUDA image (e.g. {DEVEL_IMAGE})", "--gpus",
    )


def test_nvidia_smi_cannot_reach_the_driver(make_host):
    host = started(make_host)
    install_smi(host, MODE="nodriver")
    assert_fails(
        run_role(host), "GPU | Check that a GPU is visible",
        "no GPU visible", "nvidia-smi failed (rc 9): NVIDIA-SMI has failed because it couldn't communicate with the NVIDIA driver",
        "no GPU or no NVIDIA driver", "rent another", "--gpus",
    )


def test_fewer_gpus_than_the_spec(make_host):
    host = started(make_host)
    install_smi(host, **RTX_5090)
    assert_fails(
        run_role(host, cuda_check_gpu_count=2), "GPU | Check the number of GPUs",
        "1 GPU(s) visible, the spec needs at least 2", "Fix: destroy this instance and rent an offer with 2 GPUs", "volt_instance.num_gpus",
    )


def test_another_gpu_model(make_host):
    host = started(make_host)
    install_smi(host, **{**RTX_5090, "GPU_NAME": "NVIDIA GeForce RTX 4090", "MEMORY_MIB": 24564, "POWER_CAP_W": 450})
    assert_fails(
        run_role(host), "GPU | Check the GPU model",
        "wrong GPU model: this instance has NVIDIA GeForce RTX 4090", "the spec needs 'RTX 5090'",
        "Fix: destroy this instance and rent an offer with RTX 5090 GPUs (volt_instance.gpu_name)",
    )


def test_driver_cuda_too_old(make_host):
    host = started(make_host)
    install_smi(host, **{**RTX_5090, "DRIVER": "550.54.15", "CUDA": "12.4"})
    assert_fails(
        run_role(host), "GPU | Check the CUDA version the driver supports",
        "driver 550.54.15 supports CUDA 12.4, the spec needs >= 12.8", "RTX 5090 (Blackwell) needs >= 12.8",
        "Fix: destroy this instance and rent a host with a newer driver",
    )


# --- the toolkit ---------------------------------------------------------------------------------------


def test_nvcc_missing(make_host):
    host = started(make_host)  # no toolkit mounted: a -runtime image
    install_smi(host, **RTX_5090)
    assert_fails(
        run_role(host), "Toolkit | Check that nvcc exists",
        "nvcc not found", "not on PATH", "/usr/local/cuda*/bin/nvcc", "no CUDA compiler",
        f"Fix: use an image with the -devel tag, e.g. {DEVEL_IMAGE}",
    )


def test_nvcc_too_old(make_host):
    host = started(make_host)
    install_smi(host, **RTX_5090)
    install_nvcc(host, "/usr/local/cuda-12.4", "12.4.131")
    assert host.exec("/usr/local/cuda-12.4/bin/nvcc --version").stdout.splitlines()[3] == "Cuda compilation tools, release 12.4, V12.4.131"
    assert_fails(
        run_role(host), "Toolkit | Check nvcc's version",
        "nvcc is too old: /usr/local/cuda-12.4/bin/nvcc is CUDA 12.4.131, the spec needs >= 12.8",
        f"Fix: use an image with the -devel tag of CUDA >= 12.8, e.g. {DEVEL_IMAGE}",
    )


@needs_cuda
def test_cuda_headers_missing(make_host):
    # The real nvcc 13.0 (it needs nothing beside its binary for --version), without include/.
    host = started(make_host, volumes=[f"{CUDA}/bin:{CUDA}/bin:ro"])
    install_smi(host, **RTX_5090)
    assert host.exec(f"test ! -e {CUDA}/include/cuda.h && {CUDA}/bin/nvcc --version").returncode == 0
    assert_fails(
        run_role(host), "Toolkit | Check the CUDA headers",
        f"CUDA headers missing: {CUDA}/include/cuda.h does not exist (CUDA_HOME={CUDA})",
        "The image is -runtime, not -devel, and candle will not build", f"Fix: use an image with the -devel tag, e.g. {DEVEL_IMAGE}",
    )


@needs_cuda
def test_toolkit_off_path_without_persisting(make_host):
    host = started(make_host, volumes=[f"{CUDA}:{CUDA}:ro"])
    install_smi(host, **RTX_5090)
    install_nvcc(host, "/usr/local/cuda-12.4", "12.4.131")  # globbed first, but older: the role takes 13.0
    assert_fails(
        run_role(host, cuda_check_persist_env=False), "Environment | Refuse to change the shell environment when told not to",
        f"nvcc not found on PATH, but {CUDA}/bin/nvcc exists",
        f"export CUDA_HOME={CUDA}; export PATH=$CUDA_HOME/bin:$PATH; export LD_LIBRARY_PATH=$CUDA_HOME/lib64:$LD_LIBRARY_PATH",
    )
    assert host.exec("test ! -e /etc/profile.d/cuda.sh && ! grep -q CUDA /etc/environment", check=False).returncode == 0


# --- bad input -------------------------------------------------------------------------------------------


def test_bad_input_fails_before_any_remote_task(make_host):
    host = started(make_host)
    run = run_role(host, cuda_check_gpu_count="two")
    msg = assert_fails(run, "Validating arguments against arg spec 'main' - "
                            "Check the GPU, the driver's CUDA and the CUDA toolkit of a freshly rented instance",
                       "cuda_check_gpu_count", "int")
    assert run.task_names() == [run.failed[0]], f"tasks ran after the validation failure: {run.task_names()}: {msg}"

    run = run_role(host, cuda_check_gpu_count=0, cuda_check_min_nvcc="12.8-devel")
    assert_fails(run, "Preflight | Check the role's inputs",
                 "cuda_check_gpu_count=0 must be >= 1", 'cuda_check_min_nvcc=12.8-devel is not a version like "12.8"',
                 "Fix it in group_vars or -e")
    assert len(run.task_names()) == 2  # arg spec validation, preflight: nothing reached the host

    # No remote work at all: the same failure with the host's sshd gone, not "unreachable".
    podman.run("stop", "-t", "0", host.name)
    run = run_role(host, cuda_check_gpu_count="two")
    assert_fails(run, "Check the GPU, the driver's CUDA and the CUDA toolkit of a freshly rented instance", "cuda_check_gpu_count")
    assert run.stats["unreachable"] == 0


# --- what passes -----------------------------------------------------------------------------------------


@needs_cuda
def test_two_gpus_new_driver_header_nvcc_on_path(make_host):
    """Driver 610+ prints "KMD Version / CUDA UMD Version"; an nvcc symlinked onto PATH changes nothing."""
    host = started(make_host, volumes=[f"{CUDA}:{CUDA}:ro"])
    install_smi(host, **{**RTX_5090, "GPU_COUNT": 2, "DRIVER": "610.57.04", "CUDA": "13.3"})
    host.exec(f"ln -s {CUDA}/bin/nvcc /usr/local/bin/nvcc")
    assert "CUDA UMD Version: 13.3" in host.exec("nvidia-smi").stdout
    run = run_role(host, cuda_check_gpu_count=2)
    assert run.proc.returncode == 0, run.proc.stdout[-4000:]
    assert run.facts == {
        "gpu": {"name": "NVIDIA GeForce RTX 5090", "count": 2, "memory_mib": 32607, "driver_version": "610.57.04", "driver_cuda": "13.3"},
        "nvcc_version": "13.0.88",
        "home": str(CUDA),
    }
    assert run.stats["changed"] == 0
    assert host.exec("test ! -e /etc/profile.d/cuda.sh && test ! -s /etc/environment", check=False).returncode == 0


def test_gpu_not_required(make_host):
    """cuda_check_require_gpu: false on a CPU-only host: no nvidia-smi is fine, the toolkit still counts."""
    host = started(make_host)
    install_nvcc(host, "/usr/local/cuda-12.8", "12.8.61")
    run = run_role(host, cuda_check_require_gpu=False)
    assert run.proc.returncode == 0, run.proc.stdout[-4000:]
    assert run.facts == {
        "gpu": {"name": "", "count": 0, "memory_mib": 0, "driver_version": "", "driver_cuda": ""},
        "nvcc_version": "12.8.61",
        "home": "/usr/local/cuda-12.8",
    }
    # found off PATH under /usr/local/cuda*: now on PATH for a new non-login SSH session
    assert "CUDA_HOME=/usr/local/cuda-12.8" in host.exec("cat /etc/environment").stdout
    assert host.exec("cat /etc/ld.so.conf.d/cuda.conf").stdout == "/usr/local/cuda-12.8/lib64\n"
    assert host.exec("stat -c '%a %U' /etc/profile.d/cuda.sh /etc/environment").stdout.split() == ["644", "root"] * 2
