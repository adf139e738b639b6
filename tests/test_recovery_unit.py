"""The pure decisions of recovery and the ledger: when an instance is lost, what goes back, what the rest will cost."""

from __future__ import annotations

import hashlib

from conftest import REPO

from volt_ansible import fileops, home, jobs, ledger, recovery
from volt_ansible.campaign.up import resume_line
from volt_ansible.jobs import JobState, LogProgress, Snapshot


def lay():
    return jobs.layout(REPO)


def test_lost_reasons():
    assert recovery.lost_reason(None, None, 600, 1000) == "gone from the Vast API"
    exited = {"actual_status": "exited", "status_msg": "preempted"}
    assert recovery.lost_reason(exited, None, 600, 1000).startswith("exited in the Vast API (preempted)")
    assert recovery.lost_reason({"actual_status": "running"}, None, 600, 1000) == ""
    assert recovery.lost_reason({"actual_status": "running"}, 500, 600, 1000) == ""
    assert "SSH has failed for 700 s while the Vast API says running" in recovery.lost_reason({"actual_status": "running"}, 300, 600, 1000)


def test_ssh_silence_alone_warns_and_rents_nothing_until_ssh_replace_s():
    """A flaky SSH proxy while the API says running: 10 min of silence (ssh_dead_s) is a louder warning, not a loss: a
    replacement rented then would bill two GPUs and train twice. Only ssh_replace_s of silence (or the API) replaces it."""
    running = {"actual_status": "running"}
    t0 = 1_000_000.0
    for silent in (30, 600, 3600, 7199):
        assert recovery.lost_reason(running, t0, 7200, t0 + silent) == "", silent
    assert "SSH has failed for 7200 s" in recovery.lost_reason(running, t0, 7200, t0 + 7200)
    quiet = recovery.silence_warning(7, t0, 600, 7200, t0 + 30)
    assert quiet == "warning: instance 7 runs in the Vast API but SSH has failed for 30 s (checked again next round)"
    loud = recovery.silence_warning(7, t0, 600, 7200, t0 + 900)
    assert "failed for 900 s: nothing is rented over it" in loud and "ssh_replace_s = 7200 s" in loud and "recover --force" in loud
    # the API's word wins at once, whatever SSH says
    assert recovery.lost_reason({"actual_status": "exited"}, t0, 7200, t0 + 1).startswith("exited in the Vast API")


def put(local, rel: str, data: bytes, **meta) -> None:
    path = local / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    home.merge(local, [{"path": rel, "src": meta.pop("src", rel), "size": len(data), "digest": "sha256:" + hashlib.sha256(data).hexdigest(), **meta}])


def test_plan_pushes_finished_outputs_and_the_newest_verified_epoch_of_the_first_unfinished_stage(tmp_path):
    put(tmp_path, "checkpoints/codebook_code.bin", b"codebook", kind="output", job="phase03")
    put(tmp_path, "checkpoints/scaled_vfn_stage1.safetensors", b"s1", kind="output", job="stage1")
    put(tmp_path, "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_10.safetensors", b"e10", kind="epoch", job="stage1", epoch=10, mtime_ns=1)
    put(tmp_path, "checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_3.safetensors", b"e3", kind="epoch", job="stage2", epoch=3, mtime_ns=2)
    put(tmp_path, "checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_4.safetensors", b"e4", kind="epoch", job="stage2", epoch=4, mtime_ns=3)
    (tmp_path / "checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_4.safetensors").write_bytes(b"XX")  # damaged at home: not used
    plan = recovery.plan(lay(), tmp_path)
    assert plan.pending == ["stage2", "stage3"]
    assert (plan.owner, plan.resume_epoch) == ("stage2", 3)
    assert [(f["path"], f["dest"]) for f in plan.files] == [
        ("checkpoints/codebook_code.bin", "checkpoints/codebook_code.bin"),
        ("checkpoints/scaled_vfn_stage1.safetensors", "checkpoints/scaled_vfn_stage1.safetensors"),
        ("checkpoints/epochs/stage2/scaled_vfn_stage2_epoch_3.safetensors", "checkpoints/scaled_vfn_stage2_epoch_3.safetensors"),
    ]
    assert plan.describe().startswith("to run: stage2, stage3; stage2 resumes from epoch 3")


def test_plan_with_sha256t_entries_hands_out_their_digests_and_puts_the_epoch_where_its_stage_writes(tmp_path):
    """Entries of this version (sha256t) and of older manifests (sha256) side by side: each verified with its own algorithm."""
    for rel, data in (("checkpoints/codebook_code.bin", b"codebook"), ("checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_2.safetensors", b"e2")):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(data)
    new = fileops.file_digest(tmp_path / "checkpoints/codebook_code.bin")
    home.merge(tmp_path, [{"path": "checkpoints/codebook_code.bin", "size": 8, "digest": new, "kind": "output", "job": "phase03"}])
    put(tmp_path, "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_2.safetensors", b"e2", kind="epoch", job="stage1", epoch=2, mtime_ns=1)
    plan = recovery.plan(lay(), tmp_path)
    assert plan.pending == ["stage1", "stage2", "stage3"] and (plan.owner, plan.resume_epoch) == ("stage1", 2)
    assert [(f["dest"], f["digest"]) for f in plan.files] == [
        ("checkpoints/codebook_code.bin", new),
        ("checkpoints/scaled_vfn_stage1_epoch_2.safetensors", "sha256:" + hashlib.sha256(b"e2").hexdigest())]
    (tmp_path / "checkpoints/codebook_code.bin").write_bytes(b"codebooX")  # damaged at home: Phase 0.3 runs again
    assert recovery.plan(lay(), tmp_path).pending[0] == "phase03"


def test_a_stage_that_cannot_resume_gets_no_epoch_checkpoint_and_the_plan_says_what_restarting_costs(tmp_path):
    put(tmp_path, "checkpoints/codebook_code.bin", b"codebook", kind="output", job="phase03")
    put(tmp_path, "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_4.safetensors", b"e4", kind="epoch", job="stage1", epoch=4, mtime_ns=1)
    plan = recovery.plan(lay(), tmp_path, resume={"stage1": False}, epoch_s={"stage1": 1800.0}, dph=0.2)
    assert [f["dest"] for f in plan.files] == ["checkpoints/codebook_code.bin"]  # 200 MB sent for nothing: not sent
    assert (plan.owner, plan.resume_epoch, plan.pending[0]) == ("", None, "stage1")
    assert plan.restart == ("stage1 restarts from epoch 1 (train-vfn has no --resume in its --help): 4 finished epoch(s), "
                            "~2.00 GPU-hours (~$0.40) trained again")
    assert plan.restart in plan.describe()
    # not known (never read): the checkpoint goes, the job's launch decides from the binary it runs
    assert recovery.plan(lay(), tmp_path, resume={}).resume_epoch == 4
    assert recovery.plan(lay(), tmp_path, resume={"stage1": True}).resume_epoch == 4


def test_plan_with_nothing_home_runs_everything_from_zero(tmp_path):
    plan = recovery.plan(lay(), tmp_path)
    assert plan.files == [] and plan.owner == "" and plan.pending == ["phase03", "stage1", "stage2", "stage3"]


def test_data_items_only_for_pending_jobs():
    data = {"items": [{"name": "a", "jobs": ["phase03"]}, {"name": "b", "jobs": ["stage2"]}, {"name": "c", "jobs": []},
                      {"name": "d", "jobs": ["stage2"], "enabled": False}]}
    assert [i["name"] for i in recovery.data_items(data, ["stage2", "stage3"])] == ["b"]


def job(name, stage, state, epoch=None, epochs=None, eta=None):
    return JobState(name, name, stage, state, {}, LogProgress(), epoch=epoch, epochs=epochs, eta_s=eta)


def snap(*js):
    return Snapshot(0.0, list(js), {}, None, None, None, [])


def test_remaining_hours_from_the_observed_epoch_time():
    s = snap(job("phase03", None, "done"), job("stage1", 1, "done", 10, 10, 0.0), job("stage2", 2, "running", 4, 10, 6 * 360.0),
             job("stage3", 3, "queued", None, 10))
    # stage 2: 6 epochs left in 0.6 h -> 360 s/epoch; stage 3: 10 more epochs
    assert abs(ledger.remaining_hours(s) - (0.6 + 1.0)) < 1e-9
    assert ledger.remaining_hours(snap(job("stage1", 1, "running", 0, 10, None))) is None
    assert ledger.remaining_hours(snap(job("stage1", 1, "done"), job("stage2", 2, "done"))) == 0.0


def test_budget():
    p = ledger.Projection(spent_usd=1.0, remaining_h=10.0, dph=0.2)
    assert p.total_usd == 3.0
    assert ledger.over_budget(p, None) == ""
    assert ledger.over_budget(p, 5.0) == ""
    assert ledger.over_budget(p, 2.5).startswith("projected $3.0000 > budget $2.5000")
    assert ledger.over_budget(ledger.Projection(3.0, None, 0.2), 2.5).startswith("spent $3.0000, budget $2.5000")


def test_cost_per_finished_epoch():
    running = job("stage2", 2, "running", 4, 10, 600.0)
    running.progress.epochs_done = 3  # the epoch in progress is the 4th
    s = snap(job("phase03", None, "done"), job("stage1", 1, "done", 10, 10, 0.0), running, job("stage3", 3, "queued", None, 10))
    assert ledger.epochs_done(s) == 13
    p = ledger.Projection(spent_usd=2.6, remaining_h=None, dph=0.2, epochs_done=13)
    assert p.line() == "cost so far $2.6000; $0.2000 per finished epoch; projection after the first timed epoch"
    assert "per finished epoch" not in ledger.Projection(0.1, None, 0.2).line()


def test_the_up_plan_says_whether_a_lost_instance_costs_an_epoch_or_a_stage():
    stages = lay().stages
    assert resume_line(stages, {"stage1": True, "stage2": True, "stage3": True}, {}, True) == (
        "resume: train-vfn takes --resume: a lost instance costs at most the epoch in progress")
    assert resume_line(stages, {}, {}, False) == (
        "resume: train-vfn's --help is read after the build (Volt-X's train-vfn at main has no --resume): without it a lost "
        "instance restarts its stage from epoch 1, up to 10 epochs trained again")
    assert resume_line(stages, {"stage1": False}, {"stage1": 1800.0}, True) == (
        "resume: train-vfn has no --resume (its --help): without it a lost instance restarts its stage from epoch 1, up to 10 epochs "
        "(~5.0 GPU-hours) trained again; pricing interruptible: expect that repeated work after every preemption")
    assert resume_line([j for j in lay().jobs if j.stage is None], {}, {}, True) == ""  # Phase 0.3 only: no epochs to lose


def test_a_lost_instance_whose_disk_is_still_there_fills_its_replacement_host_to_host():
    from volt_ansible.recovery import rescue_source

    outbid = {"actual_status": "stopped", "cur_state": "stopped", "intended_status": "stopped", "is_bid": True}
    assert rescue_source(outbid) == "paused"  # storage billed until the replacement runs
    assert rescue_source({"actual_status": "running", "cur_state": "running"}) == "running"  # SSH silent: its GPU bills on
    assert rescue_source({"actual_status": "exited", "cur_state": "stopped"}) == ""  # preempted: home provides
    assert rescue_source({"actual_status": "offline", "cur_state": "running"}) == ""
    assert rescue_source(None) == ""  # gone
