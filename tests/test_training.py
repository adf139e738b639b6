"""playbooks/train.yml + roles/training_tmux on a real SSH test host with the Volt-X fixture built.

One host per module (building the fixture takes ~30 s); every test starts from `reset` (no tmux,
no job state, pristine inputs, every data_sync marker). The fixture trains in well under a second per
epoch; VOLT_FIXTURE_EPOCH_MS (through training_tmux_env) makes epochs slow enough to watch or kill.
"""

from __future__ import annotations

import copy
import hashlib
import json
import re
import shutil
import subprocess
import threading
import time

import builthost
import pytest
import yaml
from testhost import REPO, TestHost, unique_name

from volt_ansible import jobs, plot, ssh

pytestmark = pytest.mark.podman

# --- the shared host and its helpers ---------------------------------------------------------------

SERVE = REPO / "molecule/resources/serve-volt-x.yml"
FIXTURE = REPO / "tests/fixtures/volt-x"
DEST = "/root/volt-x"
JOBS = ("phase03", "stage1", "stage2", "stage3")
GPU = {"name": "NVIDIA GeForce RTX 5090", "count": 1, "memory_mib": 32607, "driver_version": "570.124.04", "driver_cuda": "12.8"}

SETUP = f"""
- hosts: volt
  gather_facts: false
  tasks:
    - name: Serve the fixture
      ansible.builtin.include_tasks: {SERVE}
      vars:
        volt_x_fixture_src: {FIXTURE}

    - name: Rust from the controller's own toolchain
      ansible.builtin.include_role:
        name: rust_toolchain
      vars:
        rust_toolchain_method: archive
        rust_toolchain_archive: "{{{{ lookup('ansible.builtin.pipe', 'python3 -m volt_ansible.local.toolchain') }}}}"
        rust_toolchain_apt_packages: []

    - name: Build
      ansible.builtin.include_role:
        name: repo_build
      vars:
        repo_build_repo: file:///srv/volt-x.git

    # Volt-X's train-vfn has no resume option; the fixture's cargo feature `resume` gives one, so that both kinds of
    # binary are tested: use_build() puts one or the other (with the --help saved beside it) where the jobs run it.
    - name: Build train-vfn with the fixture's resume option too
      ansible.builtin.include_role:
        name: repo_build
      vars:
        repo_build_repo: file:///srv/volt-x.git
        repo_build_dest: /root/volt-x-resume
        repo_build_features: [vfn-training, resume]
        repo_build_bins: [train-vfn]
"""
BUILDS = {"default": DEST, "resume": "/root/volt-x-resume"}
STEMS = {"stage1": "scaled_vfn_stage1", "stage2": "scaled_vfn_stage2", "stage3": "scaled_vfn"}  # <output stem>_epoch_<e>


def group_vars() -> dict:
    return yaml.safe_load((REPO / "group_vars/all.yml").read_text())


def curriculum(epochs: int | None = None, **stage_args) -> dict:
    """volt_curriculum of group_vars, with --epochs (and other common flags) changed: pass it as an extra var."""
    cur = copy.deepcopy(group_vars()["volt_curriculum"])
    if epochs is not None:
        cur["args"]["--epochs"] = epochs
    cur["args"].update(stage_args)
    return cur


def setup_host(host: TestHost) -> None:
    """Fixture built (rust_toolchain archive + repo_build), data made, markers written, nvidia-smi double installed."""
    host.playbook(SETUP, check=True, timeout=900)
    host.exec(f"cd {DEST} && python3 /srv/volt-x-src/make_data.py {DEST} >/dev/null && mkdir -p /root/inputs "
              f"&& cp -a {DEST}/checkpoints {DEST}/data /root/inputs/")
    host.put((REPO / "molecule/resources/nvidia-smi").read_text(), "/usr/bin/nvidia-smi")
    for kind, src in BUILDS.items():
        host.exec(f"mkdir -p /root/builds/{kind} && cp {src}/target/release/train-vfn {src}/target/release/.volt-help/train-vfn.txt "
                  f"/root/builds/{kind}/")
    reset(host)


def use_build(host: TestHost, kind: str) -> None:
    """The train-vfn the jobs run: `default` (no resume option, as Volt-X's main) or `resume` (the fixture's feature)."""
    host.exec(f"cp /root/builds/{kind}/train-vfn {DEST}/target/release/train-vfn && "
              f"cp /root/builds/{kind}/train-vfn.txt {DEST}/target/release/.volt-help/train-vfn.txt")


def reset(host: TestHost, ready: tuple[str, ...] = JOBS) -> None:
    """No tmux, no job state, pristine inputs, the data_sync markers of `ready`."""
    host.exec("tmux kill-server 2>/dev/null; "
              "for _ in $(seq 100); do pgrep -x 'train-vfn|codebook-init' >/dev/null || pgrep -f '/[.]volt-train/' >/dev/null || break; "
              "sleep 0.1; done; true",
              check=False)
    host.exec(f"cd {DEST} && rm -rf logs .volt-train .volt-sync checkpoints data && cp -a /root/inputs/checkpoints /root/inputs/data . "
              f"&& mkdir -p logs .volt-sync" + "".join(f" && touch .volt-sync/{j}.ready" for j in ready) + " && rm -f /etc/nvidia-smi-double.conf")
    use_build(host, "default")


def train(host: TestHost, *, gpu: dict | None = GPU, timeout: float = 300, **extravars):
    """playbooks/train.yml against the host, as `ansible-playbook playbooks/train.yml -e ...` would run it."""
    ev = dict(extravars)
    if gpu is not None:
        ev.setdefault("cuda_check_gpu", gpu)
    return host.playbook(REPO / "playbooks/train.yml", ev, timeout=timeout)


def job_status(host: TestHost, job: str) -> dict:
    out = host.read(f"{DEST}/logs/{job}.status")
    return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)


def wait_state(host: TestHost, job: str, states=("done", "failed"), timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        st = job_status(host, job)
        if st.get("state") in states:
            return st
        if time.monotonic() > deadline:
            raise AssertionError(f"{job} never reached {states}: {st}\n{job_log(host, job)[-3000:]}")
        time.sleep(0.3)


def job_log(host: TestHost, job: str) -> str:
    name = {"phase03": "phase03"}.get(job, f"phase21_{job}" if job.startswith("stage") else job)
    return host.read(f"{DEST}/logs/{name}.log")


def tmux_windows(host: TestHost, session: str = "training") -> list[str]:
    out = host.exec(f"tmux list-windows -t ={session} -F '#{{window_name}}' 2>/dev/null", check=False).stdout
    return out.split()


def recap(proc) -> str:
    return next((ln for ln in proc.stdout.splitlines() if ln.startswith("vt-")), "")


def failure(proc) -> str:
    return proc.stdout[-5000:] + proc.stderr[-2000:]


def report(proc) -> list[str]:
    """The role's Report task output (the msg list)."""
    text = proc.stdout
    i = text.rfind("TASK [training_tmux : Report]")
    if i < 0:
        return []
    body = text[i:].split("\n\n")[0]
    start = body.find("{")
    try:
        return json.loads(body[start:].split("=>", 1)[-1].strip())["msg"] if start >= 0 else []
    except ValueError:
        return [ln.strip().strip('",') for ln in body.splitlines() if ln.strip().startswith('"')]


# --- tests -------------------------------------------------------------------------------------------

STAGE1 = ("target/release/train-vfn --data data/code_training_combined.jsonl --tokenizer checkpoints/code_tokenizer.json "
          "--encoder checkpoints/code_encoder.safetensors --decoder checkpoints/code_decoder.safetensors "
          "--output checkpoints/scaled_vfn_stage1.safetensors --epochs 10 --batch-size 32 --lr 1e-4 --warmup 2000 "
          "--hidden-dim 2048 --num-blocks 6 --device cuda")
PHASE03 = ("target/release/codebook-init --corpus data/python_sample.jsonl --tokenizer checkpoints/code_tokenizer.json "
           "--encoder checkpoints/code_encoder.safetensors --decoder checkpoints/code_decoder.safetensors "
           "--max-files 100000 --k 65536 --output checkpoints/codebook_code.bin")
STAGE_DATA = {
    "stage1": "--data data/code_training_combined.jsonl --tokenizer",
    "stage2": ("--data data/code_training_combined.jsonl --data data/apps_introductory_train.jsonl "
               "--data data/apps_interview_train.jsonl --tokenizer"),
    "stage3": ("--data data/code_training_combined.jsonl --data data/apps_introductory_train.jsonl "
               "--data data/apps_interview_train.jsonl --data data/apps_competition_train.jsonl --tokenizer"),
}
SLOW = {"VOLT_FIXTURE_EPOCH_MS": 1200}
STILL = {"VOLT_FIXTURE_EPOCH_MS": 6000}  # a job that is surely still running a minute later


@pytest.fixture(scope="module")
def host():
    # A snapshot of a host after setup_host (tests/builthost.py): built once per fixture/roles change, not per run.
    with builthost.started(unique_name("vt-training-jobs", "module"), setup_host, extra=(SETUP,)) as h:
        reset(h)
        yield h


@pytest.fixture
def fresh(host):
    reset(host)
    return host


def starts(log: str, job: str) -> int:
    return len(re.findall(rf"^volt-job: \S+ start {job} attempt", log, re.M))


def epoch_files(host, where: str = "checkpoints", job: str = "stage1") -> list[int]:
    out = host.listdir(f"{DEST}/{where}")
    return sorted(int(m[1]) for f in out if (m := re.fullmatch(rf"{STEMS[job]}_epoch_(\d+)\.safetensors", f)))


def verified_epochs(host, epochs: list[int], job: str = "stage1") -> list[int]:
    """Those of `epochs` (the job's) whose digest, written when the binary reported them saved, matches."""
    out = host.exec(f"cd {DEST}/checkpoints && for n in {' '.join(map(str, epochs))}; do f={STEMS[job]}_epoch_$n.safetensors; "
                    "[ -f $f.sha256 ] && sha256sum --status -c $f.sha256 && echo $n; done", check=False).stdout
    return [int(n) for n in out.split()]


def wait_epochs(host, n: int, timeout: float = 60, job: str = "stage1") -> list[int]:
    deadline = time.monotonic() + timeout
    while len(found := epoch_files(host, job=job)) < n:
        assert time.monotonic() < deadline, f"never {n} epoch checkpoints: {found}"
        time.sleep(0.2)
    return found


def kill_tmux(host) -> None:
    """What a crashed tmux server (or a closed terminal) does to the jobs in it."""
    host.exec("tmux kill-server")
    host.exec("for _ in $(seq 100); do pgrep -x train-vfn >/dev/null || pgrep -f '/[.]volt-train/' >/dev/null || exit 0; "
              "sleep 0.1; done; exit 1")


def nothing_started(host) -> None:
    assert host.exec("tmux has-session 2>/dev/null", check=False).returncode != 0, "a tmux session was started"
    assert host.exec(f"ls {DEST}/logs", check=False).stdout.split() == [], "a job wrote its status or log"
    assert host.exec(f"test -e {DEST}/.volt-train", check=False).returncode != 0, "job scripts were written"


def test_stage1_starts_the_exact_command_lines_in_tmux_once(fresh):
    host = fresh
    proc = train(host, stage=1)
    assert proc.returncode == 0, failure(proc)
    assert tmux_windows(host) == ["stage1", "phase03"]  # one window per job, in the session `training`, the GPU's first
    assert report(proc) == ["phase03: started in tmux window training:phase03 (log logs/phase03.log)",
                               "stage1: started in tmux window training:stage1 (log logs/phase21_stage1.log)"]

    # The rendered scripts hold the guide's command lines, binaries run directly (not cargo run).
    script = host.exec(f"cat {DEST}/.volt-train/stage1.sh").stdout
    assert f"CMD=({STAGE1})" in script.splitlines()
    assert f"CMD=({PHASE03})" in host.exec(f"cat {DEST}/.volt-train/phase03.sh").stdout.splitlines()

    st1, st0 = wait_state(host, "stage1"), wait_state(host, "phase03")
    assert (st1["state"], st1["exit_code"], st1["batch_size"], st1["attempts"], st1["resume"]) == ("done", "0", "32", "1", "no"), st1
    assert (st0["state"], st0["exit_code"]) == ("done", "0"), st0
    log1, log0 = job_log(host, "stage1"), job_log(host, "phase03")
    assert re.search(rf"^volt-job: \S+ exec {re.escape(STAGE1)}$", log1, re.M), log1[:2000]
    assert re.search(rf"^volt-job: \S+ exec {re.escape(PHASE03)}$", log0, re.M), log0[:2000]
    assert "Final model saved: checkpoints/scaled_vfn_stage1.safetensors" in log1  # the real binary's lines (stderr)
    assert "[Epoch 10/10] Train: " in log1 and "Checkpoint saved: checkpoints/scaled_vfn_stage1_epoch_10.safetensors" in log1
    assert re.search(r"^  Saved to: +checkpoints/codebook_code\.bin$", log0, re.M), log0[-2000:]
    # The finished stage's epoch checkpoints (named after its output) are archived per job.
    assert epoch_files(host) == [] and epoch_files(host, "checkpoints/epochs/stage1") == list(range(1, 11))

    again = train(host, stage=1)
    assert again.returncode == 0 and "changed=0" in recap(again), failure(again)
    assert report(again) == [
        "phase03: done (checkpoints/codebook_code.bin exists): not repeated (-e force=true runs it again)",
        "stage1: done (checkpoints/scaled_vfn_stage1.safetensors exists): not repeated (-e force=true runs it again)"]
    assert starts(job_log(host, "stage1"), "stage1") == 1 and starts(job_log(host, "phase03"), "phase03") == 1

    forced = train(host, stage=1, phase03=False, force=True)
    assert forced.returncode == 0, failure(forced)
    wait_state(host, "stage1")
    assert starts(job_log(host, "stage1"), "stage1") == 2  # appended to the same log
    assert starts(job_log(host, "phase03"), "phase03") == 1


def test_rerun_while_a_job_runs_starts_no_second_copy(fresh):
    host = fresh
    proc = train(host, stage=1, phase03=False, training_tmux_env=STILL)
    assert proc.returncode == 0, failure(proc)
    assert job_status(host, "stage1")["state"] == "running"

    for stage in (1, "all"):
        again = train(host, stage=stage, phase03=False, training_tmux_env=STILL)
        assert again.returncode == 0 and "changed=0" in recap(again), failure(again)
        assert len(report(again)) == 1 and report(again)[0].startswith("phase 2.1: running: stage1 (pid "), report(again)
    assert tmux_windows(host) == ["stage1"]
    assert host.exec("pgrep -c -x train-vfn").stdout.strip() == "1"
    assert starts(job_log(host, "stage1"), "stage1") == 1


def test_stage_all_chains_the_stages_and_waits_for_a_late_marker(fresh):
    host = fresh
    host.exec(f"rm {DEST}/.volt-sync/stage3.ready")  # data_sync still busy with stage 3's data
    proc = train(host, stage="all", phase03=False, volt_curriculum=curriculum(epochs=3),
                    training_tmux_env={"VOLT_FIXTURE_EPOCH_MS": 300}, training_tmux_chain_poll_s=1)
    assert proc.returncode == 0, failure(proc)
    assert tmux_windows(host) == ["phase21"]
    assert report(proc) == ["phase 2.1: chain stage1 -> stage2 -> stage3 started in tmux window training:phase21 "
                               "(logs logs/phase21_stage1.log, logs/phase21_stage2.log, logs/phase21_stage3.log)"]
    wait_state(host, "stage2")
    deadline = time.monotonic() + 30
    while "stage3 waits for: .volt-sync/stage3.ready" not in job_log(host, "phase21"):
        assert time.monotonic() < deadline, job_log(host, "phase21")
        time.sleep(0.2)
    chain = job_status(host, "phase21")
    assert (chain["state"], chain["current"], chain["waiting_for"].strip()) == ("running", "stage3", ".volt-sync/stage3.ready")

    host.exec(f"touch {DEST}/.volt-sync/stage3.ready")
    assert wait_state(host, "phase21", timeout=60)["state"] == "done", job_log(host, "phase21")
    for job in ("stage1", "stage2", "stage3"):
        st = job_status(host, job)
        assert (st["state"], st["exit_code"], st["resumed_from"]) == ("done", "0", ""), st
        log = job_log(host, job)
        assert STAGE_DATA[job] in log and "--epochs 3 " in log
        assert "Resumed from" not in log and "trained again" not in log  # no stage picked up another's epoch checkpoints
        assert epoch_files(host, f"checkpoints/epochs/{job}", job) == [1, 2, 3]
    assert host.exec(f"cd {DEST}/checkpoints && ls scaled_vfn_stage1.safetensors scaled_vfn_stage2.safetensors "
                     "scaled_vfn.safetensors").returncode == 0
    assert "=== ALL 3 STAGES COMPLETE ===" in job_log(host, "phase21")


def test_killing_tmux_mid_stage_resumes_from_the_newest_epoch(fresh):
    host = fresh
    use_build(host, "resume")
    proc = train(host, stage=1, phase03=False, training_tmux_env=SLOW)
    assert proc.returncode == 0, failure(proc)
    wait_epochs(host, 3)
    kill_tmux(host)
    st = job_status(host, "stage1")
    assert st["state"] == "failed" and st["reason"].startswith("hangup"), st
    # each epoch reported saved has its digest beside it (the newest may not yet: the kill can come first)
    epochs = epoch_files(host)
    ck = f"{DEST}/checkpoints/scaled_vfn_stage1_epoch_"
    verified = verified_epochs(host, epochs)
    assert verified == epochs or verified == epochs[:-1], (verified, epochs)
    # what a kill mid-write leaves (a torn newer file, no digest) and a damaged copy (a digest that fails) are set aside
    torn, damaged = epochs[-1] + 1, verified[-1]
    host.exec(f"head -c 100 {ck}{epochs[-1]}.safetensors > {ck}{torn}.safetensors && "
              f"printf X | dd of={ck}{damaged}.safetensors bs=1 seek=40 conv=notrunc status=none")
    newest = verified[-2]

    again = train(host, stage=1, phase03=False, training_tmux_env=SLOW)
    assert again.returncode == 0, failure(again)
    st = wait_state(host, "stage1", timeout=60)
    assert (st["state"], st["resumed_epoch"], st["resume"]) == ("done", str(newest), "yes"), st
    log = job_log(host, "stage1")
    ckpt = f"checkpoints/scaled_vfn_stage1_epoch_{newest}.safetensors"
    assert f"Resumed from {ckpt} (epoch {newest}, total steps " in log
    assert re.search(rf"^volt-job: \S+ exec {re.escape(STAGE1)} --resume {re.escape(ckpt)}$", log, re.M)
    assert re.search(rf"epoch {torn} \(checkpoints/scaled_vfn_stage1_epoch_{torn}.safetensors\) has no digest .*set aside", log)
    assert re.search(rf"epoch {damaged} \(checkpoints/scaled_vfn_stage1_epoch_{damaged}.safetensors\) does not match its digest", log)
    assert {f"scaled_vfn_stage1_epoch_{torn}.safetensors", f"scaled_vfn_stage1_epoch_{damaged}.safetensors"} <= set(
        host.listdir(f"{DEST}/checkpoints/.unverified"))

    # The resumed run ends byte-identical to an uninterrupted one (the fixture is deterministic).
    host.exec(f"cd {DEST} && mkdir -p /tmp/ref && {STAGE1.replace('checkpoints/scaled_vfn_stage1', '/tmp/ref/out')} >/dev/null")
    sums = host.exec(f"sha256sum {DEST}/checkpoints/scaled_vfn_stage1.safetensors /tmp/ref/out.safetensors").stdout.split()
    assert sums[0] == sums[2]


def test_without_a_resume_option_a_killed_stage_starts_again_from_epoch_1_and_says_so(fresh):
    host = fresh  # the default build: train-vfn's --help has no --resume, as Volt-X's main
    proc = train(host, stage=1, phase03=False, training_tmux_env=SLOW)
    assert proc.returncode == 0, failure(proc)
    wait_epochs(host, 2)
    kill_tmux(host)
    epochs = epoch_files(host)
    newest = max(verified_epochs(host, epochs))  # the kill may come before the newest one's digest: that one is set aside
    assert newest >= epochs[-1] - 1, epochs

    again = train(host, stage=1, phase03=False, training_tmux_env={"VOLT_FIXTURE_EPOCH_MS": 300})
    assert again.returncode == 0, failure(again)
    st = wait_state(host, "stage1", timeout=60)
    assert (st["state"], st["resume"], st["restarted_after"], st["resumed_epoch"]) == ("done", "no", str(newest), ""), st
    log = job_log(host, "stage1")
    assert (f"start stage1 attempt 1 batch 32 from epoch 1: train-vfn has no --resume in its --help, epochs 1-{newest} are "
            "trained again") in log
    assert "--resume" not in re.findall(r"^volt-job: \S+ exec (.*)$", log, re.M)[-1]  # never passed to a binary that refuses it
    # Starting over loses nothing that counts: the output is byte-identical to an uninterrupted run's.
    host.exec(f"cd {DEST} && mkdir -p /tmp/ref && {STAGE1.replace('checkpoints/scaled_vfn_stage1', '/tmp/ref/out')} 2>/dev/null")
    sums = host.exec(f"sha256sum {DEST}/checkpoints/scaled_vfn_stage1.safetensors /tmp/ref/out.safetensors").stdout.split()
    assert sums[0] == sums[2]


def test_a_gpu_job_that_falls_back_to_the_cpu_is_stopped_at_once(fresh, volt_dir):
    """The GPU double reports none: train-vfn warns and would train on the CPU (exit 0) on a rented GPU."""
    host = fresh
    host.exec("printf 'GPU_COUNT=0\\n' > /etc/nvidia-smi-double.conf")
    t0 = time.monotonic()
    proc = train(host, stage=1, phase03=False, training_tmux_env=SLOW)  # the GPU passed cuda_check (extravar), then went away
    st = wait_state(host, "stage1", timeout=30)
    stopped_in = time.monotonic() - t0
    warning = 'WARNING: CUDA not available (DriverError(CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected")), falling back to CPU'
    assert st["state"] == "failed" and st["reason"].startswith(f"stopped: {warning} -- the GPU is not usable by train-vfn"), st
    assert epoch_files(host) == [] and "] Train: " not in job_log(host, "stage1")  # not one CPU epoch
    assert host.exec("pgrep -x train-vfn", check=False).returncode == 1
    assert proc.returncode != 0 and "stage1 failed right after its start" in proc.stdout
    snap = jobs.snapshot(volt_dir, "127.0.0.1", host.port, jobs.layout(REPO), gpu_samples=1)
    assert any(w.startswith(f"stage1: failed (exit 1: stopped: {warning}") for w in snap.warnings), snap.warnings
    print(f"\ncpu fallback: train.yml + the stop took {stopped_in:.1f} s")


def test_killing_the_chain_in_stage_2_resumes_stage_2_from_its_own_epochs(fresh):
    host = fresh
    use_build(host, "resume")
    kw = {"phase03": False, "volt_curriculum": curriculum(epochs=4), "training_tmux_env": {"VOLT_FIXTURE_EPOCH_MS": 900}}
    assert (proc := train(host, stage="all", **kw)).returncode == 0, failure(proc)
    wait_state(host, "stage1")
    deadline = time.monotonic() + 60
    while not (job_status(host, "stage2").get("state") == "running" and len(epoch_files(host, job="stage2")) >= 2):
        assert time.monotonic() < deadline, job_status(host, "stage2")
        time.sleep(0.2)
    kill_tmux(host)
    epochs = epoch_files(host, job="stage2")
    newest = max(verified_epochs(host, epochs, job="stage2"))  # the kill may come before the newest one's digest: set aside
    assert newest >= epochs[-1] - 1, epochs
    assert host.exec(f"cat {DEST}/checkpoints/.volt-epochs").stdout.strip() == "stage2"

    again = train(host, stage="all", **kw)
    assert again.returncode == 0, failure(again)
    assert wait_state(host, "phase21", timeout=60)["state"] == "done", job_log(host, "phase21")
    assert starts(job_log(host, "stage1"), "stage1") == 1  # done: not repeated
    assert "stage1 already done (checkpoints/scaled_vfn_stage1.safetensors exists): skipped" in job_log(host, "phase21")
    assert f"Resumed from checkpoints/scaled_vfn_stage2_epoch_{newest}.safetensors (epoch {newest}," in job_log(host, "stage2")
    assert "Resumed from" not in job_log(host, "stage3")
    assert epoch_files(host, "checkpoints/epochs/stage2", "stage2") == [1, 2, 3, 4]


def test_bad_requests_fail_before_anything_starts(fresh):
    host = fresh
    proc = train(host, stage=7)
    assert proc.returncode != 0
    assert ("training_tmux: nothing was started: stage=7, phase03=True, force=False is not a valid request. "
            "stage must be one of all, none, 1, 2, 3 (volt_curriculum.stages has 3: stage1, stage2, stage3)") in proc.stdout
    assert "Look at the instance" not in proc.stdout  # refused before touching the host
    nothing_started(host)

    host.exec(f"cd {DEST} && rm data/code_training_combined.jsonl .volt-sync/stage1.ready")
    proc = train(host, stage=1)  # phase03's inputs are all there, but nothing may start
    assert proc.returncode != 0
    assert ("training_tmux: nothing was started; missing: stage1: data/code_training_combined.jsonl is missing; "
            "stage1: .volt-sync/stage1.ready is missing (data_sync has not verified stage1's inputs)") in proc.stdout
    nothing_started(host)

    reset(host)
    host.exec(f"rm {DEST}/data/apps_interview_train.jsonl")
    proc = train(host, stage=2, phase03=False)
    assert proc.returncode != 0
    assert ("missing: stage2: data/apps_interview_train.jsonl is missing; stage2: checkpoints/scaled_vfn_stage1.safetensors "
            "(stage1's output) is missing: run stage1 first, or -e stage=all") in proc.stdout
    nothing_started(host)

    reset(host)
    proc = train(host, stage=1, phase03=False, gpu={**GPU, "count": 0})
    assert proc.returncode != 0 and "stage1: no GPU visible (cuda_check_gpu reports none" in proc.stdout
    host.exec(f"cd {DEST} && mv target/release/train-vfn target/release/train-vfn.off")
    proc = train(host, stage="all")
    assert proc.returncode != 0
    assert "stage1: target/release/train-vfn is missing or not executable (build it: playbooks/prepare.yml)" in proc.stdout
    nothing_started(host)
    host.exec(f"cd {DEST} && mv target/release/train-vfn.off target/release/train-vfn")


def test_epoch_checkpoints_of_another_stage_block_a_stage(fresh):
    host = fresh
    host.exec(f"cd {DEST}/checkpoints && touch scaled_vfn_stage1.safetensors scaled_vfn_stage2_epoch_4.safetensors "
              "&& echo stage1 > .volt-epochs")
    proc = train(host, stage=2, phase03=False)
    assert proc.returncode != 0
    assert ("stage2: checkpoints/scaled_vfn_stage2_epoch_*.safetensors (1 files, newest epoch 4) belong to stage1 "
            "(checkpoints/.volt-epochs), not stage2") in proc.stdout
    nothing_started(host)


def test_out_of_memory_at_start_retries_with_smaller_batches(fresh):
    host = fresh
    proc = train(host, stage=1, phase03=False, training_tmux_env={"VOLT_FIXTURE_OOM_ABOVE_BATCH": 16})
    assert proc.returncode == 0, failure(proc)
    st = wait_state(host, "stage1")
    assert (st["state"], st["batch_size"], st["oom_retries"], st["attempts"]) == ("done", "16", "1", "2"), st
    log = job_log(host, "stage1")
    # the binary's stderr is in the log
    assert 'ERROR: training failed: internal error: train_scaled_vfn: DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")' in log
    assert "out of GPU memory with --batch-size 32 (exit 1): retrying with --batch-size 16" in log
    assert re.search(rf"^volt-job: \S+ exec {re.escape(STAGE1.replace('--batch-size 32', '--batch-size 16'))}$", log, re.M)

    reset(host)
    proc = train(host, stage=1, phase03=False, training_tmux_env={"VOLT_FIXTURE_OOM_ABOVE_BATCH": 4})
    assert proc.returncode != 0
    assert ("training_tmux: stage1 failed right after its start (exit 1: out of GPU memory with --batch-size 8); "
            "the end of logs/phase21_stage1.log:") in proc.stdout
    st = job_status(host, "stage1")
    assert (st["state"], st["batch_size"], st["oom_retries"], st["attempts"]) == ("failed", "8", "2", "3"), st


def test_train_playbook_checks_the_gpu_with_cuda_check(fresh):
    host = fresh
    host.put((REPO / "molecule/resources/nvcc").read_text(), "/usr/local/cuda-12.8/bin/nvcc")
    host.put("/* cuda.h */\n", "/usr/local/cuda-12.8/include/cuda.h", mode="0644")
    host.exec("ln -sf /usr/local/cuda-12.8/bin/nvcc /usr/local/bin/nvcc && printf 'NVCC_VERSION=12.8.61\\n' > /etc/nvcc-double.conf")
    try:
        proc = train(host, gpu=None, stage=1, phase03=False)  # cuda_check runs (nvidia-smi double: one RTX 5090)
        assert proc.returncode == 0, failure(proc)
        assert "TASK [cuda_check : GPU | Check that a GPU is visible]" in proc.stdout
        assert wait_state(host, "stage1")["state"] == "done"

        reset(host)
        host.exec("mv /usr/bin/nvidia-smi /usr/bin/nvidia-smi.off")
        proc = train(host, gpu=None, stage=1, phase03=False)
        assert proc.returncode != 0 and "cuda_check: no GPU visible" in proc.stdout
        nothing_started(host)
        proc = train(host, gpu=None, stage="none")  # Phase 0.3 only: the CPU job needs no GPU
        assert proc.returncode == 0, failure(proc)
        assert tmux_windows(host) == ["phase03"]
    finally:
        host.exec("[ -e /usr/bin/nvidia-smi.off ] && mv /usr/bin/nvidia-smi.off /usr/bin/nvidia-smi; "
                  "rm -rf /usr/local/cuda-12.8 /usr/local/bin/nvcc", check=False)


@pytest.fixture(scope="module")
def volt_dir(host, tmp_path_factory):
    """A campaign directory that reaches the test host as volt-ansible reaches an instance (key + pinned host key)."""
    d = tmp_path_factory.mktemp("volt")
    shutil.copy(host.key, ssh.key_path(d))
    ssh.key_path(d).chmod(0o600)
    ssh.pin_host_key(d, "127.0.0.1", host.port)
    return d


def test_watching_status_logs_and_plot_over_ssh(fresh, volt_dir, tmp_path):
    host = fresh
    lay = jobs.layout(REPO)
    proc = train(host, stage=1, volt_curriculum=curriculum(epochs=6), training_tmux_env={"VOLT_FIXTURE_EPOCH_MS": 3000})
    assert proc.returncode == 0, failure(proc)
    wait_epochs(host, 2)

    snap = jobs.snapshot(volt_dir, "127.0.0.1", host.port, lay, gpu_samples=2)
    s1, p03 = snap.job("stage1"), snap.job("phase03")
    assert (s1.state, s1.stage, s1.epochs) == ("running", 1, 6)
    assert s1.epoch >= 2 and s1.progress.step > 0 and s1.progress.loss > 0
    assert s1.elapsed_s >= 1 and s1.eta_s is not None and 0 < s1.eta_s < 40
    assert p03.state == "done" and snap.job("stage2").state == "pending"
    assert [(g.util_pct, g.mem_used_mib, g.mem_total_mib) for g in snap.gpus] == [(0.0, 1.0, 32607.0)]  # the nvidia-smi double
    assert snap.load is not None and snap.cpus >= 1
    assert any(w.startswith("GPU utilization under 50% (GPU 0 0%) while stage1 runs") for w in snap.warnings), snap.warnings
    lines = jobs.format_snapshot(snap)
    assert re.match(r"stage1\s+running\s+stage 1/3\s+epoch \d/6\s+step \d+/\d+\s+loss [0-9.]+\s+valid [0-9.]+ \(epoch \d\)\s+"
                    r"elapsed \d+s\s+ETA \d+s\s+batch 32$", lines[1]), lines
    # the default build cannot resume: status says what losing the instance now would cost
    assert s1.resumable is False and s1.redo_epochs >= 2
    assert any(ln.startswith("resume: stage1: train-vfn has no --resume (its --help): if the instance is lost, stage1 restarts "
                             "from epoch 1 and ") for ln in lines), lines
    assert "GPU 0: 0% utilization, memory 1/32607 MiB" in lines

    tail = subprocess.run(jobs.logs_command(volt_dir, "127.0.0.1", host.port, "stage1", lines=3, lay=lay),
                          capture_output=True, text=True, timeout=30)
    assert tail.returncode == 0 and len(tail.stdout.splitlines()) == 3, tail
    with subprocess.Popen(jobs.logs_command(volt_dir, "127.0.0.1", host.port, "1", follow=True, lines=1, lay=lay),
                          stdout=subprocess.PIPE, text=True) as follow:
        timer = threading.Timer(30, follow.terminate)
        timer.start()
        try:
            got = [follow.stdout.readline() for _ in range(4)]  # more than the one line asked for: it follows
        finally:
            timer.cancel()
            follow.terminate()
    assert all(got) and any(ln.startswith("[Epoch ") for ln in got), got

    wait_state(host, "stage1")
    host.exec("mv /usr/bin/nvidia-smi /usr/bin/nvidia-smi.off")
    try:
        done = jobs.snapshot(volt_dir, "127.0.0.1", host.port, lay, gpu_samples=1)
    finally:
        host.exec("mv /usr/bin/nvidia-smi.off /usr/bin/nvidia-smi")
    assert done.gpus is None and "GPU: n/a (no nvidia-smi)" in jobs.format_snapshot(done)
    assert done.job("stage1").state == "done" and done.job("stage1").eta_s == 0 and done.warnings == []

    logs = jobs.fetch_logs(volt_dir, "127.0.0.1", host.port, lay)
    assert set(logs) == {"phase03", "stage1"} and logs["stage1"] == job_log(host, "stage1").rstrip("\n")
    png = plot.write_png(logs, tmp_path / "loss.png", lay)
    data = png.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert hashlib.sha256(data).hexdigest()  # a real file, written whole
    import matplotlib.image

    pixels = matplotlib.image.imread(str(png))
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100 and float(pixels.std()) > 0.01  # not a blank image


def test_status_files_parse_and_reflect_an_interrupted_job(fresh, volt_dir):
    """A job killed hard (SIGKILL: no trap runs, as when the instance restarts) reads as interrupted, then resumes."""
    host = fresh
    use_build(host, "resume")
    lay = jobs.layout(REPO)
    assert train(host, stage=1, phase03=False, training_tmux_env=SLOW).returncode == 0
    wait_epochs(host, 1)
    pid = job_status(host, "stage1")["pid"]
    host.exec(f"kill -KILL $(pgrep -P {pid}) {pid}")  # the job script and its children, by id
    snap = jobs.snapshot(volt_dir, "127.0.0.1", host.port, lay, gpu_samples=1)
    s1 = snap.job("stage1")
    assert s1.state == "interrupted" and s1.status["state"] == "running", s1
    assert any(w.startswith("stage1: interrupted (its process is gone") for w in snap.warnings)
    again = train(host, stage=1, phase03=False, training_tmux_env=SLOW)
    assert again.returncode == 0 and report(again)[0].startswith("stage1: started"), failure(again)
    assert "Resumed from checkpoints/scaled_vfn_stage1_epoch_" in job_log(host, "stage1")
