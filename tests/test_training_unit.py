"""The training pieces that need no host: the role's plan/decide filters, log parsing, ETA, snapshots, the plot."""

from __future__ import annotations

import copy
import importlib.util
import shlex

import matplotlib.image
import pytest
import yaml
from conftest import REPO

from volt_ansible import curriculum, jobs, plot
from volt_ansible.errors import VoltError

_spec = importlib.util.spec_from_file_location("training_tmux_filters", REPO / "roles/training_tmux/filter_plugins/training_tmux.py")
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

GV = yaml.safe_load((REPO / "group_vars/all.yml").read_text())
DEFAULTS = yaml.safe_load((REPO / "roles/training_tmux/defaults/main.yml").read_text())
SETTINGS = {"dest": "/root/volt-x", "bin_dir": "target/release", "status_dir": "logs", "script_dir": ".volt-train",
            "ready_dir": ".volt-sync", "ready_suffix": ".ready", "chain_name": "phase21", "epoch_owner_file": ".volt-epochs",
            "epoch_archive": "epochs"}
COMMON = ("--tokenizer checkpoints/code_tokenizer.json --encoder checkpoints/code_encoder.safetensors "
          "--decoder checkpoints/code_decoder.safetensors")
GUIDE = {  # the guide's Step 4 / Step 6 command lines, with target/release/<bin> for `cargo run ... --`
    "phase03": (f"target/release/codebook-init --corpus data/python_sample.jsonl {COMMON} --max-files 100000 --k 65536 "
                "--output checkpoints/codebook_code.bin"),
    "stage1": (f"target/release/train-vfn --data data/code_training_combined.jsonl {COMMON} "
               "--output checkpoints/scaled_vfn_stage1.safetensors --epochs 10 --batch-size 32 --lr 1e-4 --warmup 2000 "
               "--hidden-dim 2048 --num-blocks 6 --device cuda"),
    "stage2": ("target/release/train-vfn --data data/code_training_combined.jsonl --data data/apps_introductory_train.jsonl "
               f"--data data/apps_interview_train.jsonl {COMMON} --output checkpoints/scaled_vfn_stage2.safetensors "
               "--epochs 10 --batch-size 32 --lr 5e-5 --warmup 1000 --hidden-dim 2048 --num-blocks 6 --device cuda"),
    "stage3": ("target/release/train-vfn --data data/code_training_combined.jsonl --data data/apps_introductory_train.jsonl "
               f"--data data/apps_interview_train.jsonl --data data/apps_competition_train.jsonl {COMMON} "
               "--output checkpoints/scaled_vfn.safetensors --epochs 10 --batch-size 32 --lr 2e-5 --warmup 500 "
               "--hidden-dim 2048 --num-blocks 6 --device cuda"),
}


def plan(curriculum: dict | None = None) -> dict:
    return F.training_tmux_plan(GV["volt_phase03"], curriculum or GV["volt_curriculum"], SETTINGS)


# --- the role's filters ------------------------------------------------------------------------------


def test_settings_mirror_the_role_defaults():
    for key, value in SETTINGS.items():
        if key != "dest":
            assert DEFAULTS[f"training_tmux_{key}"] == value
    assert DEFAULTS["training_tmux_dest"] == SETTINGS["dest"]
    assert curriculum.role_defaults() == {k: DEFAULTS[f"training_tmux_{k}"] for k in curriculum.SETTINGS}  # read, never copied


def test_plan_renders_the_guides_command_lines_from_group_vars():
    p = plan()
    for job in [p["phase03"], *p["stages"]]:
        assert job["command"] == GUIDE[job["name"]]
        assert shlex.split(job["command"]) == job["argv"]
    s1, s2, s3 = p["stages"]
    assert s1["inputs"] == ["data/code_training_combined.jsonl", "checkpoints/code_tokenizer.json",
                            "checkpoints/code_encoder.safetensors", "checkpoints/code_decoder.safetensors"]
    assert (s1["log"], s1["status"], s1["ready"], s1["script_path"]) == (
        "logs/phase21_stage1.log", "logs/stage1.status", ".volt-sync/stage1.ready", "/root/volt-x/.volt-train/stage1.sh")
    assert p["phase03"]["log"] == "logs/phase03.log" and p["phase03"]["epoch"] is None and p["phase03"]["batches"] == []
    assert s1["batches"] == [32, 16, 8] and s1["batch_flag"] == "--batch-size" and s1["resume_flag"] == "--resume"
    assert s1["epoch"] == {"dir": "checkpoints", "prefix": "scaled_vfn_stage1_epoch_", "suffix": ".safetensors",
                           "glob": "checkpoints/scaled_vfn_stage1_epoch_*.safetensors", "owner": "checkpoints/.volt-epochs",
                           "archive": "checkpoints/epochs/stage1"}
    assert (s1["cpu_fallback"], p["phase03"]["cpu_fallback"]) == ("falling back to CPU", "")
    assert s1["previous"] is None and s2["previous"] == {"name": "stage1", "output": "checkpoints/scaled_vfn_stage1.safetensors"}
    assert s3["previous"]["name"] == "stage2" and s3["output"] == "checkpoints/scaled_vfn.safetensors"
    assert p["chain"]["status"] == "logs/phase21.status" and p["launcher"] == "/root/volt-x/.volt-train/launch.sh"


def test_a_new_cli_or_stage_is_an_edit_of_the_table():
    cur = copy.deepcopy(GV["volt_curriculum"])
    cur["resume_flag"] = "--init-from"
    cur["args"]["--device"] = None            # dropped
    cur["args"]["--steps"] = 5000             # new flags go last
    cur["args"]["--fp16"] = True              # a flag alone
    cur["stages"].append({"name": "stage4", "log": "logs/phase21_stage4.log",
                          "args": {"--data": ["data/x.jsonl"], "--output": "checkpoints/s4.safetensors", "--lr": "1e-5"}})
    p = plan(cur)
    assert len(p["stages"]) == 4 and p["stages"][3]["previous"]["name"] == "stage3"
    assert p["stages"][3]["argv"][-4:] == ["6", "--steps", "5000", "--fp16"] and "--device" not in p["stages"][3]["argv"]
    assert "--warmup" not in p["stages"][3]["argv"]  # null in the common args and not set by the stage
    assert p["stages"][0]["resume_flag"] == "--init-from"


def test_argv_rules_and_table_errors():
    assert F.training_tmux_argv({"--a": [1, "x"], "--b": True, "--c": None, "--d": False, "--e": 0.5}) == [
        "--a", "1", "--a", "x", "--b", "--e", "0.5"]
    with pytest.raises(F.AnsibleFilterError, match="must be a string, number, list, true or null"):
        F.training_tmux_argv({"--a": {"x": 1}})
    cur = copy.deepcopy(GV["volt_curriculum"])
    del cur["stages"][1]["args"]["--output"]
    with pytest.raises(F.AnsibleFilterError, match=r"volt_curriculum.stages\[1\]: the output flag '--output' must have exactly one value"):
        plan(cur)
    cur = copy.deepcopy(GV["volt_curriculum"])
    cur["stages"][2]["name"] = "stage1"
    with pytest.raises(F.AnsibleFilterError, match="job names must be unique"):
        plan(cur)
    cur = copy.deepcopy(GV["volt_curriculum"])
    cur["epoch_checkpoint"] = "scaled_vfn.safetensors"
    with pytest.raises(F.AnsibleFilterError, match=r"epoch_checkpoint must contain \{epoch\}"):
        plan(cur)


def probe(**jobs_state) -> dict:
    """A probe result: every file present, nothing running, unless jobs_state says otherwise."""
    base = {"status": {}, "alive": False, "output": False, "missing": [], "previous_output": False, "epochs": [], "owner": ""}
    names = ["phase03", "stage1", "stage2", "stage3", "phase21"]
    return {"dest": True, "tmux": True, "windows": {}, "jobs": {n: {**base, **jobs_state.get(n, {})} for n in names}}


GPU = {"name": "NVIDIA GeForce RTX 5090", "count": 1}


def decide(pr, stage="all", phase03=True, force=False, gpu=GPU):
    return F.training_tmux_decide(plan(), pr, stage, phase03, force, gpu, True, True, "training")


def test_decide_starts_what_is_due_and_nothing_twice():
    d = decide(probe(), stage=1)
    # the GPU's job launched first (each launch waits its grace period), Phase 0.3 (CPU) right after
    assert [u["window"] for u in d["start"]] == ["stage1", "phase03"] and d["problems"] == []
    assert d["start"][0] == {"window": "stage1", "script": "/root/volt-x/.volt-train/stage1.sh", "args": [],
                             "status": "logs/stage1.status", "jobs": ["stage1"], "log": "logs/phase21_stage1.log"}

    running = {"status": {"state": "running", "pid": "42", "started": "T"}, "alive": True}
    d = decide(probe(stage1=running), stage="all")
    assert [u["window"] for u in d["start"]] == ["phase03"]
    assert d["report"][1] == "phase 2.1: running: stage1 (pid 42, since T): nothing started again"
    d = decide(probe(phase21=running, stage2=running), stage=3, force=True)
    assert [u["window"] for u in d["start"]] == ["phase03"]  # force never starts a second copy
    assert "phase21 chain (pid 42, since T) / stage2 (pid 42, since T)" in d["report"][1]

    done = {"status": {"state": "done"}, "output": True, "previous_output": True}
    d = decide(probe(phase03=done, stage1=done, stage2={"previous_output": True}), stage="all")
    assert d["start"] == [{"window": "phase21", "script": "/root/volt-x/.volt-train/phase21.sh", "args": [], "status": "logs/phase21.status",
                           "jobs": ["stage2", "stage3"], "log": "logs/phase21_stage2.log"}]
    assert d["report"][0].startswith("phase03: done (checkpoints/codebook_code.bin exists): not repeated")
    d = decide(probe(phase03=done, stage1=done), stage="all", force=True)
    assert [u["window"] for u in d["start"]] == ["phase21", "phase03"] and d["start"][0]["args"] == ["--force"]
    assert d["start"][0]["jobs"] == ["stage1", "stage2", "stage3"]
    # an output without a status came from elsewhere (uploaded): done; a failed status with an output is not
    d = decide(probe(stage1={"output": True}), stage=1, phase03=False)
    assert d["start"] == [] and d["report"][0].startswith("stage1: done")
    d = decide(probe(stage1={"output": True, "status": {"state": "failed"}}), stage=1, phase03=False)
    assert [u["window"] for u in d["start"]] == ["stage1"]
    # an interrupted job (status running, process gone) is started again
    d = decide(probe(stage1={"status": {"state": "running", "pid": "1"}, "alive": False}), stage=1, phase03=False)
    assert [u["window"] for u in d["start"]] == ["stage1"]


def test_decide_lists_every_problem_and_starts_nothing():
    pr = probe(phase03={"missing": ["data/python_sample.jsonl"]},
               stage2={"missing": ["target/release/train-vfn", "data/apps_interview_train.jsonl", ".volt-sync/stage2.ready"],
                       "epochs": [1, 3], "owner": "stage1"})
    d = decide(pr, stage=2, gpu={"count": 0})
    assert d["start"] == []
    assert d["problems"] == [
        "phase03: data/python_sample.jsonl is missing",
        "stage2: target/release/train-vfn is missing or not executable (build it: playbooks/prepare.yml)",
        "stage2: data/apps_interview_train.jsonl is missing",
        "stage2: .volt-sync/stage2.ready is missing (data_sync has not verified stage2's inputs)",
        "stage2: checkpoints/scaled_vfn_stage1.safetensors (stage1's output) is missing: run stage1 first, or -e stage=all",
        "stage2: no GPU visible (cuda_check_gpu reports none: run the cuda_check role first, as playbooks/train.yml does)",
        "stage2: checkpoints/scaled_vfn_stage2_epoch_*.safetensors (2 files, newest epoch 3) belong to stage1 (checkpoints/.volt-epochs), "
        "not stage2: finish stage1 first or move them away",
    ]
    assert decide(probe(), stage=1, gpu=None)["problems"][0].startswith("stage1: no GPU visible")
    assert decide(probe(), stage="none", gpu=None)["problems"] == []  # Phase 0.3 runs on the CPU
    off = F.training_tmux_decide(plan(), probe(stage1={"missing": [".volt-sync/stage1.ready"]}), 1, False, False, None, False, False)
    assert off["problems"] == [] and off["start"][0]["window"] == "stage1"  # both checks switched off
    nodest = {"dest": False, "dest_path": "/root/volt-x", "tmux": False, "jobs": {}}
    assert decide(nodest, stage=1)["problems"][:2] == ["/root/volt-x does not exist (run playbooks/prepare.yml first)",
                                                       "tmux is not installed (the bootstrap role installs it)"]


# --- log parsing, ETA --------------------------------------------------------------------------------

LOG = """\
volt-job: 2025-01-01T00:00:00Z start stage1 attempt 1 batch 32
volt-job: 2025-01-01T00:00:00Z exec target/release/train-vfn --batch-size 32
=== Volt X Scaled VFN Training (Phase 2.1) ===
Data files: 1
  - data/code_training_combined.jsonl
Using device: Cuda(CudaDevice(DeviceId(1)))
ERROR: training failed: internal error: train_scaled_vfn: DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")
volt-job: 2025-01-01T00:00:01Z out of GPU memory with --batch-size 32 (exit 1): retrying with --batch-size 16
volt-job: 2025-01-01T00:00:01Z start stage1 attempt 2 batch 16
=== Volt X Scaled VFN Training (Phase 2.1) ===
[Epoch 1/1] Step 1/58 | Loss: 0.5000 | LR: 5.00e-8 | 128 slots
[Epoch 1/1] Step 50/58 | Loss: 0.4000 | LR: 2.50e-6 | 128 slots
[Epoch 1/1] Complete | Train Loss: 0.3400 | Valid Loss: 0.3300
[Epoch 1/3] Train: 0.3400 | Valid: 0.3300 | Time: 200.0s | Total steps: 58
Checkpoint saved: checkpoints/scaled_vfn_stage1_epoch_1.safetensors
[Epoch 1/1] Step 1/58 | Loss: 0.3300 | LR: 2.95e-6 | 128 slots
volt-job: 2025-01-01T00:10:00Z failed stage1 (exit 129: hangup (tmux server or window killed))
volt-job: 2025-01-01T00:11:00Z start stage1 attempt 1 batch 16 resume from checkpoints/scaled_vfn_stage1_epoch_1.safetensors (epoch 1)
=== Volt X Scaled VFN Training (Phase 2.1) ===
Resumed from checkpoints/scaled_vfn_stage1_epoch_1.safetensors (epoch 1, total steps 58); continuing at epoch 2/3
[Epoch 1/1] Step 1/58 | Loss: 0.3200 | LR: 2.95e-6 | 128 slots
[Epoch 1/1] Step 50/58 | Loss: 0.3100 | LR: 5.45e-6 | 128 slots
"""
PATTERNS = jobs.layout(REPO).job("stage1").patterns
OOM, CPU = GV["volt_curriculum"]["oom_pattern"], GV["volt_curriculum"]["cpu_fallback_pattern"]


def test_parse_log_follows_restarts():
    p = jobs.parse_log(LOG, PATTERNS, OOM, CPU)
    # the inner lines always say [Epoch 1/1]: the epoch is the run's finished epochs (summaries, or the resume point) + 1
    assert (p.epoch, p.epochs, p.step, p.steps, p.loss) == (2, 3, 50, 58, 0.31)
    assert (p.last_checkpoint, p.resumed_from, p.resumed_epoch) == (
        "checkpoints/scaled_vfn_stage1_epoch_1.safetensors", "checkpoints/scaled_vfn_stage1_epoch_1.safetensors", 1)
    assert p.validation == {} and p.epoch_seconds == [] and p.cpu_fallback is None  # the current run has no summary yet
    assert (p.attempts, p.batch_size, p.oom) == (3, 16, 1)
    assert p.errors == ['ERROR: training failed: internal error: train_scaled_vfn: DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")']
    second = jobs.parse_log(LOG[:LOG.index("[Epoch 1/1] Step 1/58 | Loss: 0.3300")], PATTERNS)
    assert (second.epoch, second.epochs_done, second.validation, second.epoch_seconds) == (1, 1, {"epoch": 1, "train": 0.34, "valid": 0.33}, [200.0])
    # global steps: epoch 2 of the killed run started at 59; the resumed run logs it again: the later value counts
    assert jobs.loss_series(LOG, PATTERNS) == [(1, 0.5), (50, 0.4), (59, 0.32), (108, 0.31)]
    assert jobs.validation_series(LOG, PATTERNS) == [(1, 58, 0.33)]
    cb_pat = jobs.layout(REPO).job("phase03").patterns
    cb = jobs.parse_log("=== Volt X Codebook Initialization ===\n  Corpus: data/x.jsonl\n=== Codebook Initialization Complete ===\n", cb_pat)
    assert cb.activity == "=== Codebook Initialization Complete ===" and cb.epoch is None
    assert jobs.parse_log("") == jobs.LogProgress()
    assert jobs.parse_log(LOG) == jobs.LogProgress(attempts=3, batch_size=16)  # no patterns: nothing read
    cpu = jobs.parse_log("WARNING: CUDA not available (no CUDA device), falling back to CPU\nUsing device: Cpu\n", PATTERNS, OOM, CPU)
    assert cpu.cpu_fallback == "WARNING: CUDA not available (no CUDA device), falling back to CPU"


def test_status_file_parsing():
    st = jobs.parse_status("job=stage1\nstate=failed\nreason=inputs missing: a=b c\nnonsense\n")
    assert st == {"job": "stage1", "state": "failed", "reason": "inputs missing: a=b c"}
    assert jobs.iso_ts("1970-01-01T00:01:00Z") == 60.0 and jobs.iso_ts("") is None and jobs.iso_ts("soon") is None


def test_eta_from_epoch_timing():
    ckpts = {1: 1000.0, 2: 1100.0, 3: 1200.0}
    assert jobs.eta_seconds(10, ckpts, now=1200.0, since=900.0) == pytest.approx(700.0)   # 7 epochs x 100 s
    assert jobs.eta_seconds(10, ckpts, now=1250.0, since=900.0) == pytest.approx(650.0)   # half of epoch 4 gone
    assert jobs.eta_seconds(10, ckpts, now=5000.0, since=900.0) == 0.0                     # late: never negative
    assert jobs.eta_seconds(3, ckpts, now=1200.0) == 0.0                                   # all epochs done
    # resumed at 5000 s: epochs 1-3 were written by the earlier run; only epoch 4 (300 s after the start) counts
    assert jobs.eta_seconds(10, {**ckpts, 4: 5300.0}, now=5300.0, since=5000.0) == pytest.approx(1800.0)
    assert jobs.eta_seconds(10, ckpts, now=5000.0, since=4000.0) is None  # no epoch of this run has finished
    assert jobs.eta_seconds(None, ckpts, now=1.0) is None and jobs.eta_seconds(10, {}, now=1.0) is None
    assert jobs.fmt_duration(3725) == "1h02m" and jobs.fmt_duration(59) == "59s" and jobs.fmt_duration(90061) == "1d01h"
    assert jobs.fmt_duration(None) == "n/a"


def test_gpu_and_load_parsing():
    gpus = jobs.parse_gpu(["97, 21034, 32607\n40, 100, 32607\n", "93, 21040, 32607\n[N/A], 1, 2\n"])
    assert [(g.index, g.util_pct, g.mem_used_mib) for g in gpus] == [(0, 95.0, 21040.0), (1, 40.0, 100.0)]
    assert jobs.parse_gpu([]) is None and jobs.parse_gpu(["NVIDIA-SMI has failed because it couldn't communicate"]) is None
    assert jobs.parse_loadavg("12.10 8.00 6.25 3/900 12345") == (12.1, 8.0, 6.25) and jobs.parse_loadavg("") is None


# --- snapshots ---------------------------------------------------------------------------------------

LAY = jobs.layout(REPO)
M = jobs.MARK


def snap_text(now=10_000, stage1_status="", stage1_alive=1, stage1_log="", log_mtime=9_990, chain="", gpu=("30, 1000, 32607",),
              epochs=(), outputs=(), help_text=None):
    parts = [f"{M} now {now}"]
    for j in [*LAY.jobs, LAY.chain]:
        status = stage1_status if j.name == "stage1" else chain if j.name == "phase21" else ""
        parts += [f"{M} status {j.name}", status, f"{M} alive {j.name} {stage1_alive if j.name == 'stage1' else 0}"]
        if j.name == "stage1" and stage1_log:
            parts += [f"{M} logmeta {j.name} 100 {log_mtime}", f"{M} log {j.name}", stage1_log]
        if j.name in outputs:
            parts.append(f"{M} output {j.name} 1")
        if j.name == "stage1":
            parts += [f"{M} epochs stage1", *[f"{t} checkpoints/scaled_vfn_stage1_epoch_{e}.safetensors" for e, t in epochs]]
            # stage 3's files (another job's names) are never counted as stage 1's
            parts += [f"{M} epochs stage3", "9999 checkpoints/scaled_vfn_epoch_9.safetensors"]
        if j.name == "stage1" and help_text is not None:
            parts += [f"{M} help stage1", help_text]
    for g in gpu:
        parts += [f"{M} gpu", g]
    parts += [f"{M} load 1.50 1.00 0.50 2/300 999", f"{M} nproc 192", f"{M} end"]
    return "\n".join(parts) + "\n"


RUNNING = "state=running\npid=7\nstarted=1970-01-01T02:30:00Z\nattempt_started=1970-01-01T02:30:00Z\nbatch_size=32\noom_retries=0\n"


def test_snapshot_of_a_running_stage_with_eta_and_a_gpu_warning():
    text = snap_text(stage1_status=RUNNING, stage1_log=LOG, epochs=[(1, 9_100), (2, 9_400)], outputs=("phase03",))
    s = jobs.parse_snapshot(text, LAY)
    s1 = s.job("stage1")
    assert (s1.state, s1.epoch, s1.epochs, s1.progress.step, s1.elapsed_s) == ("running", 2, 3, 50, 1000.0)
    assert s1.eta_s == 0.0  # 200 s per epoch, the last one started 600 s ago: overdue, never negative
    assert s.job("phase03").state == "done" and s.job("stage2").state == "pending"
    assert s.gpus[0].util_pct == 30.0 and s.load == (1.5, 1.0, 0.5) and s.cpus == 192
    assert s.warnings == ["GPU utilization under 50% (GPU 0 30%) while stage1 runs: data loading may be the bottleneck, "
                          "or the batch size too small (guide, Step 7)"]
    lines = jobs.format_snapshot(s)
    assert lines[1].split() == ["stage1", "running", "stage", "1/3", "epoch", "2/3", "step", "50/58", "loss", "0.31", "elapsed",
                                "16m40s", "ETA", "0s", "batch", "32"]
    assert s.notes == [] and s1.resumable is None  # nothing says yet whether train-vfn can resume
    assert "GPU 0: 30% utilization, memory 1000/32607 MiB" in lines and "CPU load 1.50 1.00 0.50 on 192 cores" in lines
    assert lines[-1].startswith("warning: GPU utilization under 50%")


def test_snapshot_eta_midway():
    s = jobs.parse_snapshot(snap_text(now=9_500, stage1_status=RUNNING.replace("02:30:00", "02:28:20"), stage1_log=LOG,
                                      log_mtime=9_499, epochs=[(1, 9_100), (2, 9_400)]), LAY)
    # since 8900: epoch 1 took 200 s, epoch 2 300 s -> 250 s/epoch; 1 epoch left, 100 s of it gone
    assert s.job("stage1").eta_s == pytest.approx(150.0)
    # the binary's own epoch times, when the run has logged them, win over file times: 2 x 120 s, 1 left, 100 s gone
    timed = LOG + "[Epoch 2/3] Train: 0.3 | Valid: 0.3 | Time: 120.0s | Total steps: 116\n"
    s = jobs.parse_snapshot(snap_text(now=9_500, stage1_status=RUNNING.replace("02:30:00", "02:28:20"), stage1_log=timed,
                                      log_mtime=9_499, epochs=[(1, 9_100), (2, 9_400)]), LAY)
    assert s.job("stage1").eta_s == pytest.approx(20.0) and s.job("stage1").progress.epoch_seconds == [120.0]


HELP_NO_RESUME = """Usage: train-vfn [OPTIONS]
  --data PATH          Training data (repeatable)
  --output PATH        Output checkpoint
  --device DEVICE      cpu | cuda"""


def test_snapshot_says_what_a_stage_that_cannot_resume_would_cost():
    timed = LOG + "[Epoch 2/3] Train: 0.3 | Valid: 0.3 | Time: 1800.0s | Total steps: 116\n"
    s = jobs.parse_snapshot(snap_text(stage1_status=RUNNING, stage1_log=timed, help_text=HELP_NO_RESUME), LAY)
    s1 = s.job("stage1")
    assert (s1.resumable, s1.redo_epochs, s1.redo_s) == (False, 2, 3600.0) and s.resume() == {"stage1": False}
    assert s.notes == ["stage1: train-vfn has no --resume (its --help): if the instance is lost, stage1 restarts from epoch 1 and "
                       "2 finished epoch(s), ~1.00 GPU-hours are trained again"]
    assert "resume: " + s.notes[0] in jobs.format_snapshot(s)
    yes = jobs.parse_snapshot(snap_text(stage1_status=RUNNING, stage1_log=LOG, help_text=HELP_NO_RESUME + "\n  [--resume PATH]"), LAY)
    assert yes.job("stage1").resumable is True and yes.notes == []
    # what the job's own launch found wins over the help text (it ran that very binary)
    ran = jobs.parse_snapshot(snap_text(stage1_status=RUNNING + "resume=no\nrestarted_after=3\n", stage1_log=LOG,
                                        help_text="--resume"), LAY)
    assert ran.job("stage1").resumable is False and "restarted from epoch 1 (3 epoch(s) trained again)" in jobs.format_snapshot(ran)[1]
    assert jobs.help_lists("[--resume PATH]", "--resume") and jobs.help_lists("--resume=PATH", "--resume")
    assert not jobs.help_lists("--resume-from PATH", "--resume") and not jobs.help_lists("--no-resume", "--resume")


def test_a_gpu_stage_on_the_cpu_is_reported():
    log = LOG + "WARNING: CUDA not available (no CUDA device found), falling back to CPU\nUsing device: Cpu\n"
    s = jobs.parse_snapshot(snap_text(stage1_status=RUNNING, stage1_log=log), LAY)
    assert "stage1: training on the CPU on a GPU instance: WARNING: CUDA not available (no CUDA device found), falling back to CPU" in s.warnings


def test_snapshot_warns_about_stalls_interruptions_failures_and_shows_na():
    stalled = jobs.parse_snapshot(snap_text(stage1_status=RUNNING, stage1_log=LOG, log_mtime=10_000 - 3600, gpu=("99, 1, 2",)), LAY)
    assert stalled.warnings == ["stage1: stalled: its log has not moved for 1h00m (volt_watch.stall_min = 15 min): "
                                "look at `volt-ansible logs stage1`"]
    assert stalled.job("stage1").stalled and jobs.format_snapshot(stalled)[1].split()[:2] == ["stage1", "stalled"]
    assert not jobs.parse_snapshot(snap_text(stage1_status=RUNNING, stage1_log=LOG, log_mtime=10_000 - 3600), LAY, stall_s=7200).job("stage1").stalled
    gone = jobs.parse_snapshot(snap_text(stage1_status=RUNNING, stage1_alive=0, gpu=()), LAY)
    assert gone.job("stage1").state == "interrupted" and gone.gpus is None
    assert gone.warnings[0].startswith("stage1: interrupted (its process is gone")
    assert "GPU: n/a (no nvidia-smi)" in jobs.format_snapshot(gone)
    failed = jobs.parse_snapshot(snap_text(stage1_status="state=failed\nexit_code=1\nreason=out of GPU memory with --batch-size 8\n"), LAY)
    assert failed.warnings == ["stage1: failed (exit 1: out of GPU memory with --batch-size 8; see logs/phase21_stage1.log)"]
    waiting = jobs.parse_snapshot(snap_text(stage1_status="state=done\n", chain="state=running\npid=9\ncurrent=stage2\n"
                                            "waiting_for=.volt-sync/stage2.ready \n"), LAY)
    # the chain is not alive in this text (alive 0): a dead chain's "waiting" is not believed
    assert waiting.job("stage2").state == "pending"
    alive_chain = snap_text(stage1_status="state=done\n", chain="state=running\npid=9\ncurrent=stage2\nwaiting_for=.volt-sync/stage2.ready \n")
    alive_chain = alive_chain.replace(f"{M} alive phase21 0", f"{M} alive phase21 1")
    w = jobs.parse_snapshot(alive_chain, LAY)
    assert (w.job("stage2").state, w.job("stage2").detail, w.job("stage3").state) == ("waiting", "waiting for .volt-sync/stage2.ready", "queued")
    assert not jobs.parse_snapshot(f"{M} norepo\n{M} end\n", LAY).reachable_repo


def test_layout_and_job_names():
    assert [j.name for j in LAY.jobs] == ["phase03", "stage1", "stage2", "stage3"] and LAY.chain.name == "phase21"
    assert [(j.log, j.status, j.stage, j.epochs, j.gpu) for j in LAY.stages][0] == (
        "logs/phase21_stage1.log", "logs/stage1.status", 1, 10, True)
    assert LAY.job("phase03").script == "/root/volt-x/.volt-train/phase03.sh" and LAY.epoch_owner == "checkpoints/.volt-epochs"
    for alias in ("stage2", "2", "phase21_stage2"):
        assert jobs.resolve_job(LAY, alias).name == "stage2"
    assert jobs.resolve_job(LAY, "phase21").name == "phase21"
    with pytest.raises(VoltError, match="no job 'stage9': choose one of phase03, stage1, stage2, stage3, phase21"):
        jobs.resolve_job(LAY, "stage9")
    moved = jobs.layout_from({**GV, "training_tmux_dest": "/data/volt-x"})
    assert moved.dest == "/data/volt-x" and moved.job("stage1").script == "/data/volt-x/.volt-train/stage1.sh"
    with pytest.raises(VoltError, match="group_vars/all.yml has no training jobs"):
        jobs.layout_from({"volt_campaign": "x"})


def test_logs_command_is_the_campaign_ssh(tmp_path):
    argv = jobs.logs_command(tmp_path, "203.0.113.7", 2222, "stage1", follow=True, lines=20, lay=LAY, tty=True)
    assert argv[:2] == ["ssh", "-t"] and f"UserKnownHostsFile={tmp_path}/known_hosts" in argv and "root@203.0.113.7" in argv
    assert argv[-1].endswith('exec tail -n 20 -F -- "$@"') and "logs/phase21_stage1.log" in argv[-1]
    every = jobs.logs_command(tmp_path, "h", 22, lay=LAY)[-1]
    assert all(j.log in every for j in LAY.jobs) and "-F" not in every
    script = jobs.remote_script(LAY, gpu_samples=2)
    assert script.count("nvidia-smi --query-gpu=utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits") == 1
    assert "cat /proc/loadavg" in script


# --- plot --------------------------------------------------------------------------------------------


def test_plot_writes_a_png_with_one_panel_per_stage(tmp_path):
    out = plot.write_png({"stage1": LOG, "stage2": LOG.replace("Loss: 0.3", "Loss: 0.2"), "phase03": "codebook-init: x"},
                         tmp_path / "sub" / "loss.png", LAY)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
    assert (width, height) == (1000, 640)  # 10 x 3.2 in per panel, 2 panels, 100 dpi
    pixels = matplotlib.image.imread(str(out))
    assert float(pixels.std()) > 0.01
    with pytest.raises(VoltError, match="no progress lines in the training logs yet"):
        plot.write_png({"stage1": "train-vfn: start"}, tmp_path / "none.png", LAY)
    assert not (tmp_path / "none.png").exists()


def test_status_and_logs_scripts_run_hostile_names_and_paths_as_data(tmp_path):
    """jobs.py's scripts on the instance (status, logs, plot): names and paths from the spec never run as code."""
    import copy
    import subprocess

    gv = copy.deepcopy(GV)
    pwn = tmp_path / "pwned"
    stage = gv["volt_curriculum"]["stages"][0]
    stage["name"] = f"s1$(touch {pwn}1)"
    stage["log"] = f"-logs/stage `touch {pwn}2` $5.log"
    stage["args"]["--output"] = f"checkpoints/out $(touch {pwn}3).safetensors"
    lay = jobs.layout_from({**gv, "training_tmux_dest": str(tmp_path / "dest $(touch x)")})
    log = tmp_path / "dest $(touch x)" / stage["log"]
    log.parent.mkdir(parents=True)
    log.write_text("[Epoch 1/1] line\n")
    subprocess.run(["sh", "-s"], input=jobs.remote_script(lay, gpu_samples=1), capture_output=True, text=True, check=True)
    tail = jobs.logs_command(tmp_path, "h", 22, job="1", lay=lay)[-1]
    shown = subprocess.run(["sh", "-c", tail], capture_output=True, text=True)
    assert shown.returncode == 0 and "[Epoch 1/1] line" in shown.stdout, shown.stderr
    none = jobs.logs_command(tmp_path, "h", 22, job="2", lay=lay)[-1]
    assert "no job log yet" in subprocess.run(["sh", "-c", none], capture_output=True, text=True).stderr
    assert not list(tmp_path.glob("pwned*")) and not (tmp_path / "x").exists()
