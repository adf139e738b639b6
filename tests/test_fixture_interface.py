"""The volt-x test fixture (tests/fixtures/volt-x) against the real Volt-X binaries' interface.

The expected texts are copied from Project4070/Volt_X (commit ed32a77): crates/volt-learn/src/bin/train_vfn.rs,
codebook_init.rs, crates/volt-learn/Cargo.toml, crates/volt-soft/src/training/scaled_flow_matching.rs; the data formats
and loader messages from crates/volt-learn/src/code_dataset.rs, code_pairs.rs, stack_corpus.rs, codebook_init.rs (records
deserialized with serde_json, whose error texts the data tests derive from the record they write). The fixture is
built here with this machine's cargo (offline, into temporary target directories) once per module, in three ways:
no features, the guide's `--features vfn-training` line, and `--features vfn-training,resume`.
"""

from __future__ import annotations

import os
import re
import shutil
import struct
import subprocess
import sys
import time
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "fixtures" / "volt-x"
SMI_DOUBLE = ROOT / "molecule" / "resources" / "nvidia-smi"

TRAIN_HELP = """\
Usage: train-vfn [OPTIONS]
  --data <PATH>         JSONL dataset file (repeatable)
  --tokenizer <PATH>    BPE tokenizer JSON
  --encoder <PATH>      Frozen encoder safetensors
  --decoder <PATH>      Frozen decoder safetensors
  --output <PATH>       Output safetensors path
  --epochs <N>          Training epochs (default: 10)
  --batch-size <N>      Batch size (default: 32)
  --lr <FLOAT>          Peak learning rate (default: 1e-4)
  --warmup <N>          Warmup steps (default: 2000)
  --hidden-dim <N>      VFN hidden dimension (default: 2048)
  --num-blocks <N>      Number of residual blocks (default: 6)
  --device <cpu|cuda>   Compute device (default: cpu)
"""
RESUME_HELP_LINE = "  --resume <PATH>       Continue after this epoch checkpoint\n"
CODEBOOK_HELP = """\
Usage: codebook-init [OPTIONS]

Options:
  --corpus <PATH>      Path to JSONL file or directory (default: D:/VoltData/phase0/the_stack_sample)
  --output <PATH>      Output codebook path (default: checkpoints/codebook_code.bin)
  --max-files <N>      Max code files to process (default: 1000000)
  --k <N>              Number of codebook entries (default: 65536)
  --tokenizer <PATH>   BPE tokenizer JSON (enables learned encoder)
  --encoder <PATH>     Encoder safetensors weights
  --decoder <PATH>     Decoder safetensors weights
  --help               Show this help
"""
REAL_TRAIN_FLAGS = {
    "--data",
    "--tokenizer",
    "--encoder",
    "--decoder",
    "--output",
    "--epochs",
    "--batch-size",
    "--lr",
    "--warmup",
    "--hidden-dim",
    "--num-blocks",
    "--device",
}

F4 = r"(?:\d+\.\d{4}|NaN|inf)"
# Every line train-vfn prints on a run, as a regex (the header's own lines are checked exactly).
TRAIN_LINES = {
    "step": rf"\[Epoch 1/1\] Step (\d+)/(\d+) \| Loss: {F4} \| LR: (\d\.\d\de-?\d+) \| (\d+) slots",
    "complete": rf"\[Epoch 1/1\] Complete \| Train Loss: {F4} \| Valid Loss: {F4}",
    "epoch": rf"\[Epoch (\d+)/(\d+)\] Train: {F4} \| Valid: {F4} \| Time: \d+\.\ds \| Total steps: (\d+)",
    "checkpoint": r"Checkpoint saved: (.+)",
    "final": r"Final model saved: (.+)",
    "done": r"Training complete: (\d+) steps in \d+\.\ds",
    "warning": r"WARNING: CUDA not available \((.+)\), falling back to CPU",
    "device": r"Using device: (Cpu|Cuda\(CudaDevice\(DeviceId\(\d+\)\)\))",
    "loading": r"Loading datasets\.\.\.",
    "loaded_file": r"\[code_pairs\] Loaded (\d+) problems from (.+)",
    "total": r"\[code_pairs\] Total: (\d+) problems from (\d+) files",
    "loaded": r"Loaded (\d+) problems total",
    "translator": r"Loading LearnedTranslator\.\.\.",
    "translator_ok": r"Translator loaded",
    "encoding": r"Encoding problems to FramePairs\.\.\.",
    "encoded": r"Encoded (\d+) pairs in \d+\.\ds \(\S+ problems/sec\)",
    "created": r"ScaledVfn created: (\d+) parameters",
    "resumed": r"Resumed from (.+) \(epoch (\d+), total steps (\d+)\); continuing at epoch (\d+)/(\d+)",
    "starting": r"Starting training\.\.\.",
    "blank": r"",
}
NO_DEVICE = 'DriverError(CUDA_ERROR_NO_DEVICE, "no CUDA-capable device is detected")'
NO_DRIVER = 'DriverError(CUDA_ERROR_UNKNOWN, "unknown error")'
OOM_LINE = 'ERROR: training failed: internal error: train_scaled_vfn: DriverError(CUDA_ERROR_OUT_OF_MEMORY, "out of memory")'
PANIC = r"\n?thread 'main'(?: \(\d+\))? panicked at crates/volt-learn/src/bin/train_vfn\.rs:\d+:\d+:\n"


def cargo() -> str:
    found = shutil.which("cargo") or str(Path.home() / ".cargo" / "bin" / "cargo")
    if not Path(found).is_file():
        pytest.fail("cargo is needed to build tests/fixtures/volt-x (none on PATH or in ~/.cargo/bin)")
    return found


@dataclass
class Builds:
    plain: Path  # target/release of `cargo build --release` (no features)
    guide: Path  # ... of the guide's line (--features vfn-training)
    resume: Path  # ... of --features vfn-training,resume
    data: Path  # make_data.py output: checkpoints/ and data/


def base_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("VOLT_", "RUST_BACKTRACE", "RUST_LIB_BACKTRACE", "NVIDIA_SMI_DOUBLE_CONF"))}
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> Builds:
    tmp = tmp_path_factory.mktemp("voltx")
    lines = {
        "plain": [],
        "guide": ["-p", "volt-learn", "--features", "vfn-training", "--bin", "codebook-init", "--bin", "train-vfn"],
        "resume": ["--features", "vfn-training,resume"],
    }
    out = {}
    for name, extra in lines.items():
        target = tmp / f"target-{name}"
        proc = subprocess.run(
            [cargo(), "build", "--release", "--offline", *extra],
            cwd=FIXTURE,
            capture_output=True,
            text=True,
            env=base_env(CARGO_TARGET_DIR=str(target)),
            timeout=240,
        )
        assert proc.returncode == 0, proc.stderr
        out[name] = target / "release"
    data = tmp / "inputs"
    proc = subprocess.run([sys.executable, str(FIXTURE / "make_data.py"), str(data)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    return Builds(data=data, **out)


def run(binary: Path, args: list[str], cwd: Path, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(binary), *args], cwd=cwd, capture_output=True, text=True, env=base_env(**env), timeout=60)


def train_args(b: Builds, *extra: str, data: str = "mbpp.jsonl") -> list[str]:
    """Inputs as absolute paths; --output relative, as the stages pass it (the binary creates its directory)."""
    ck = b.data / "checkpoints"
    return [
        "--data",
        str(b.data / "data" / data),
        "--tokenizer",
        str(ck / "code_tokenizer.json"),
        "--encoder",
        str(ck / "code_encoder.safetensors"),
        "--decoder",
        str(ck / "code_decoder.safetensors"),
        "--batch-size",
        "4",
        "--warmup",
        "20",
        *extra,
    ]


def classify(stderr: str) -> list[tuple[str, re.Match]]:
    """(kind, match) of every line after the header; fails on a line of no known kind."""
    lines = stderr.split("\n")
    assert lines[-1] == "", "stderr ends with a newline"
    head_end = lines.index("")  # the header ends with a blank line
    out = []
    for line in lines[head_end + 1 : -1]:
        for kind, pattern in TRAIN_LINES.items():
            if m := re.fullmatch(pattern, line):
                out.append((kind, m))
                break
        else:
            pytest.fail(f"line of no known kind: {line!r}\n{stderr}")
    return out


def header(b: Builds, args: list[str], epochs: str, batch: str, device: str, output: str) -> str:
    values = dict(zip(args[::2], args[1::2], strict=False))
    ck = b.data / "checkpoints"
    return (
        f"=== Volt X Scaled VFN Training (Phase 2.1) ===\nData files: 1\n  - {values['--data']}\n"
        f"Tokenizer:  {ck / 'code_tokenizer.json'}\nEncoder:    {ck / 'code_encoder.safetensors'}\n"
        f"Decoder:    {ck / 'code_decoder.safetensors'}\nOutput:     {output}\nEpochs:     {epochs}\n"
        f"Batch size: {batch}\nLR:         0.0001\nWarmup:     20 steps\nHidden dim: 2048\nNum blocks: 6\n"
        f"Device:     {device}\n\n"
    )


def records_in(b: Builds, name: str) -> int:
    return sum(1 for line in (b.data / "data" / name).read_text().splitlines() if line.strip())


def safetensors_header(path: Path) -> dict:
    import json

    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    return json.loads(raw[8 : 8 + n])


# --- build ---------------------------------------------------------------------------------------------------------


def test_features_and_binaries_like_the_real_crate(builds: Builds) -> None:
    manifest = tomllib.loads((FIXTURE / "crates" / "volt-learn" / "Cargo.toml").read_text())
    assert manifest["features"] == {"default": [], "code-training": [], "vfn-training": ["code-training"], "resume": []}
    bins = {b["name"]: b for b in manifest["bin"]}
    assert "required-features" not in bins["codebook-init"]
    assert bins["train-vfn"]["required-features"] == ["vfn-training"]
    assert not manifest.get("dependencies")
    assert (builds.plain / "codebook-init").is_file() and not (builds.plain / "train-vfn").exists()
    for d in (builds.guide, builds.resume):
        assert (d / "codebook-init").is_file() and (d / "train-vfn").is_file()


# --- train-vfn command line ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_is_the_real_text(builds: Builds, tmp_path: Path, flag: str) -> None:
    proc = run(builds.guide / "train-vfn", [flag], tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", TRAIN_HELP)
    assert set(re.findall(r"^  (--[a-z-]+)", proc.stderr, re.M)) == REAL_TRAIN_FLAGS
    resumable = run(builds.resume / "train-vfn", [flag], tmp_path)
    assert (resumable.returncode, resumable.stdout, resumable.stderr) == (0, "", TRAIN_HELP + RESUME_HELP_LINE)
    assert set(re.findall(r"^  (--[a-z-]+)", resumable.stderr, re.M)) == REAL_TRAIN_FLAGS | {"--resume"}


@pytest.mark.parametrize("args", [["--resume", "x"], ["--data", "d.jsonl", "--resume", "checkpoints/x.safetensors"]])
def test_resume_refused_without_the_feature(builds: Builds, tmp_path: Path, args: list[str]) -> None:
    proc = run(builds.guide / "train-vfn", args, tmp_path)
    assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "Unknown argument: --resume\n")
    assert not list(tmp_path.iterdir())


def test_unknown_flag_and_missing_data(builds: Builds, tmp_path: Path) -> None:
    unknown = run(builds.guide / "train-vfn", ["--data", "d.jsonl", "--steps", "5"], tmp_path)
    assert (unknown.returncode, unknown.stdout, unknown.stderr) == (1, "", "Unknown argument: --steps\n")
    for args in ([], ["--epochs", "2", "--device", "cuda"]):
        proc = run(builds.guide / "train-vfn", args, tmp_path)
        assert (proc.returncode, proc.stdout) == (1, "")
        assert proc.stderr == "ERROR: at least one --data path is required\nRun with --help for usage\n"


@pytest.mark.parametrize(
    ("flag", "error"),
    [
        ("--epochs", "invalid epochs: ParseIntError { kind: InvalidDigit }"),
        ("--batch-size", "invalid batch-size: ParseIntError { kind: InvalidDigit }"),
        ("--lr", "invalid lr: ParseFloatError { kind: Invalid }"),
        ("--warmup", "invalid warmup: ParseIntError { kind: InvalidDigit }"),
        ("--hidden-dim", "invalid hidden-dim: ParseIntError { kind: InvalidDigit }"),
        ("--num-blocks", "invalid num-blocks: ParseIntError { kind: InvalidDigit }"),
    ],
)
def test_malformed_number_panics(builds: Builds, tmp_path: Path, flag: str, error: str) -> None:
    proc = run(builds.guide / "train-vfn", ["--data", "d.jsonl", flag, "1x"], tmp_path)
    assert proc.returncode == 101
    assert re.fullmatch(PANIC + re.escape(error) + r"\nnote: run with `RUST_BACKTRACE=1` .*\n", proc.stderr), proc.stderr


def test_flag_without_value_panics(builds: Builds, tmp_path: Path) -> None:
    proc = run(builds.guide / "train-vfn", ["--data", "d.jsonl", "--output"], tmp_path)
    assert proc.returncode == 101
    assert re.match(PANIC + r"index out of bounds: the len is 4 but the index is 4\n", proc.stderr), proc.stderr


def test_repeated_flag_keeps_last_value_and_data_adds(builds: Builds, tmp_path: Path) -> None:
    args = train_args(
        builds, "--epochs", "4", "--epochs", "1", "--device", "cuda", "--device", "cpu", "--data", str(builds.data / "data" / "humaneval.jsonl")
    )
    proc = run(builds.guide / "train-vfn", args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\nData files: 2\n" in proc.stderr and "\nEpochs:     1\n" in proc.stderr
    assert "\nDevice:     cpu\n" in proc.stderr and "WARNING" not in proc.stderr
    assert re.search(r"^\[Epoch 1/1\] Train: ", proc.stderr, re.M)
    records = records_in(builds, "mbpp.jsonl") + records_in(builds, "humaneval.jsonl")
    assert f"[code_pairs] Total: {records} problems from 2 files" in proc.stderr


# --- train-vfn run -------------------------------------------------------------------------------------------------


def test_stage1_run_logs_and_files(builds: Builds, tmp_path: Path) -> None:
    output = "checkpoints/scaled_vfn_stage1.safetensors"
    args = train_args(builds, "--output", output, "--epochs", "2")
    proc = run(builds.guide / "train-vfn", args, tmp_path)
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert proc.stderr.startswith(header(builds, args, "2", "4", "cpu", output))
    lines = classify(proc.stderr)
    kinds = [k for k, _ in lines]
    assert "warning" not in kinds and lines[0][0] == "device" and lines[0][1][1] == "Cpu"
    assert kinds[:12] == [
        "device",
        "loading",
        "loaded_file",
        "total",
        "loaded",
        "translator",
        "translator_ok",
        "encoding",
        "encoded",
        "created",
        "blank",
        "starting",
    ]
    loaded = dict(lines)
    records = str(records_in(builds, "mbpp.jsonl"))
    assert loaded["loaded_file"].group(1) == loaded["total"].group(1) == loaded["loaded"].group(1) == records

    # Two one-epoch calls: step lines at step 1 and every 50th, then Complete, the epoch summary, the checkpoint.
    body = lines[12:]
    per_epoch = None
    total = 0
    for epoch in (1, 2):
        steps = []
        while body[0][0] == "step":
            steps.append(body.pop(0)[1])
        s = int(steps[0][2])
        per_epoch = per_epoch or s
        assert [int(m[1]) for m in steps] == [1] + list(range(50, s + 1, 50)) and s == per_epoch > 50
        assert all(int(m[2]) == s and int(m[4]) > 0 for m in steps)
        assert [k for k, _ in body[:3]] == ["complete", "epoch", "checkpoint"]
        total += s
        summary = body[1][1]
        assert (int(summary[1]), int(summary[2]), int(summary[3])) == (epoch, 2, total)
        assert body[2][1][1] == f"checkpoints/scaled_vfn_stage1_epoch_{epoch}.safetensors"
        body = body[3:]
    assert [k for k, _ in body] == ["blank", "final", "done"]
    assert body[1][1][1] == output and int(body[2][1][1]) == total
    # The last 10% of the pairs validate, 4 pairs a step, the partial batch dropped.
    pairs = int(loaded["encoded"].group(1))
    assert per_epoch == (pairs - max(pairs // 10, 1)) // 4

    files = sorted(p.name for p in (tmp_path / "checkpoints").iterdir())
    assert files == ["scaled_vfn_stage1.safetensors", "scaled_vfn_stage1_epoch_1.safetensors", "scaled_vfn_stage1_epoch_2.safetensors"]
    head = safetensors_header(tmp_path / "checkpoints" / "scaled_vfn_stage1_epoch_1.safetensors")
    meta = head.pop("__metadata__")
    assert (meta["epoch"], meta["epochs"], meta["step"], meta["hidden_dim"]) == ("1", "2", str(per_epoch), "2048")
    assert {"vfn.w1", "vfn.b1", "vfn.w2", "vfn.b2", "optim.m.vfn.w1", "optim.v.vfn.b2"} <= set(head)
    assert safetensors_header(tmp_path / output)["__metadata__"]["epoch"] == "2"


def test_default_output_and_lr_format(builds: Builds, tmp_path: Path) -> None:
    proc = run(builds.guide / "train-vfn", train_args(builds, "--epochs", "1", "--lr", "3e-4"), tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "\nOutput:     checkpoints/scaled_vfn.safetensors\n" in proc.stderr and "\nLR:         0.0003\n" in proc.stderr
    steps = [m for k, m in classify(proc.stderr) if k == "step"]
    assert steps[0][3] == "1.50e-5"  # step 1 of 20 warmup steps at 3e-4, Rust's {:.2e}
    assert (tmp_path / "checkpoints" / "scaled_vfn_epoch_1.safetensors").is_file()
    assert (tmp_path / "checkpoints" / "scaled_vfn.safetensors").is_file()


def smi_script(directory: Path, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / "nvidia-smi"
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)
    return directory


SMI_CASES = {
    "absent": (None, NO_DRIVER),
    "nodriver": ('echo "NVIDIA-SMI has failed because it couldn\'t communicate with the NVIDIA driver."; exit 9', NO_DRIVER),
    "no-devices": ('echo "No devices were found"; exit 6', NO_DEVICE),
    "empty-list": ("exit 0", NO_DEVICE),
    "double-gpu0": ("GPU_COUNT=0", NO_DEVICE),
    "double-nodriver": ("MODE=nodriver", NO_DRIVER),
}


def smi_env(case: str, tmp_path: Path) -> dict[str, str]:
    body, _ = SMI_CASES.get(case, (case, None))
    bindir = tmp_path / "bin"
    if case.startswith("double") or body in ("GPU_COUNT=1",):
        bindir.mkdir()
        shutil.copy(SMI_DOUBLE, bindir / "nvidia-smi")
        (tmp_path / "smi.conf").write_text(body + "\n")
        return {"PATH": str(bindir), "NVIDIA_SMI_DOUBLE_CONF": str(tmp_path / "smi.conf")}
    if body is None:
        bindir.mkdir()
        return {"PATH": str(bindir)}
    return {"PATH": str(smi_script(bindir, body))}


@pytest.mark.parametrize("case", list(SMI_CASES))
@pytest.mark.parametrize("device", ["cuda", "gpu"])
def test_cuda_fallback_warns_and_trains_on_cpu(builds: Builds, tmp_path: Path, case: str, device: str) -> None:
    output = "checkpoints/scaled_vfn_stage1.safetensors"
    args = train_args(builds, "--output", output, "--epochs", "1", "--device", device)
    proc = run(builds.guide / "train-vfn", args, tmp_path, **smi_env(case, tmp_path))
    assert proc.returncode == 0, proc.stderr
    head = header(builds, args, "1", "4", device, output)
    reason = SMI_CASES[case][1]
    assert proc.stderr.startswith(head + f"WARNING: CUDA not available ({reason}), falling back to CPU\nUsing device: Cpu\nLoading datasets...\n")
    kinds = [k for k, _ in classify(proc.stderr)]
    assert kinds.count("warning") == 1 and "epoch" in kinds and kinds[-1] == "done"
    assert (tmp_path / output).is_file() and (tmp_path / "checkpoints" / "scaled_vfn_stage1_epoch_1.safetensors").is_file()


@pytest.mark.parametrize("smi", ['echo "GPU 0: NVIDIA H100 80GB HBM3 (UUID: GPU-0d1f2e3c-4b5a-6978-8695-a4b3c2d1e0f9)"', "GPU_COUNT=1"])
def test_cuda_with_a_gpu_listed(builds: Builds, tmp_path: Path, smi: str) -> None:
    args = train_args(builds, "--epochs", "1", "--device", "cuda")
    proc = run(builds.guide / "train-vfn", args, tmp_path, **smi_env(smi, tmp_path))
    assert proc.returncode == 0, proc.stderr
    assert "WARNING" not in proc.stderr
    assert "\n\nUsing device: Cuda(CudaDevice(DeviceId(1)))\nLoading datasets...\n" in proc.stderr


def test_cpu_device_does_not_probe_cuda(builds: Builds, tmp_path: Path) -> None:
    marker = tmp_path / "probed"
    env = {"PATH": str(smi_script(tmp_path / "bin", f"touch {marker}; exit 9"))}
    for device in ("cpu", "cuda:0", "CUDA"):  # anything but cuda/gpu is the CPU, silently
        proc = run(builds.guide / "train-vfn", train_args(builds, "--epochs", "1", "--device", device), tmp_path, **env)
        assert proc.returncode == 0 and "WARNING" not in proc.stderr and "\nUsing device: Cpu\n" in proc.stderr
    assert not marker.exists()


def test_oom_knob(builds: Builds, tmp_path: Path) -> None:
    args = train_args(builds, "--epochs", "2", "--device", "cuda", "--batch-size", "16")
    proc = run(builds.guide / "train-vfn", args, tmp_path, VOLT_FIXTURE_OOM_ABOVE_BATCH="8", **smi_env("GPU_COUNT=1", tmp_path))
    assert proc.returncode == 1
    assert proc.stderr.endswith("\nStarting training...\n" + OOM_LINE + "\n")
    assert "Step" not in proc.stderr and not list((tmp_path / "checkpoints").glob("*_epoch_*"))
    ok = run(builds.guide / "train-vfn", train_args(builds, "--epochs", "1"), tmp_path, VOLT_FIXTURE_OOM_ABOVE_BATCH="8")
    assert ok.returncode == 0 and "CUDA_ERROR_OUT_OF_MEMORY" not in ok.stderr


def test_training_errors(builds: Builds, tmp_path: Path) -> None:
    missing = run(builds.guide / "train-vfn", train_args(builds, data="nope.jsonl"), tmp_path)
    assert missing.returncode == 1
    nope = builds.data / "data" / "nope.jsonl"
    assert missing.stderr.endswith(
        f"Loading datasets...\n[code_pairs] WARNING: failed to load {nope}: learn error: Failed to open dataset file: "
        "No such file or directory (os error 2)\n"
        "ERROR: failed to load datasets: learn error: failed to load any problems from 1 dataset files\n"
    )
    big = run(builds.guide / "train-vfn", train_args(builds, "--batch-size", "100000"), tmp_path)
    assert big.returncode == 1
    assert re.search(
        r"\nStarting training\.\.\.\nERROR: training failed: internal error: train_scaled_vfn: "
        r"batch_size \(100000\) > training pairs \(\d+\)\n$",
        big.stderr,
    )


# --- resume --------------------------------------------------------------------------------------------------------


def test_resume_ends_byte_identical(builds: Builds, tmp_path: Path) -> None:
    output = "checkpoints/scaled_vfn_stage2.safetensors"
    args = train_args(builds, "--output", output, "--epochs", "3", "--device", "cuda")
    whole, cut = tmp_path / "whole", tmp_path / "cut"
    whole.mkdir()
    cut.mkdir()
    env = smi_env("no-devices", tmp_path)
    full = run(builds.resume / "train-vfn", args, whole, **env)
    assert full.returncode == 0, full.stderr

    # Interrupt during epoch 2, watching the log as it is written (stderr must be line-flushed).
    log = cut / "train.log"
    with log.open("w") as sink:
        proc = subprocess.Popen(
            [str(builds.resume / "train-vfn"), *args],
            cwd=cut,
            stdout=subprocess.DEVNULL,
            stderr=sink,
            env=base_env(VOLT_FIXTURE_EPOCH_MS="1500", **env),
        )
        try:
            deadline = time.monotonic() + 30
            while "Checkpoint saved: checkpoints/scaled_vfn_stage2_epoch_1.safetensors\n" not in log.read_text():
                assert proc.poll() is None and time.monotonic() < deadline, log.read_text()
                time.sleep(0.05)
            assert "[Epoch 1/3] Train: " in log.read_text()
        finally:
            proc.kill()
            proc.wait()
    assert not (cut / output).exists() and not (cut / "checkpoints" / "scaled_vfn_stage2_epoch_2.safetensors").exists()
    first = "checkpoints/scaled_vfn_stage2_epoch_1.safetensors"
    assert (cut / first).read_bytes() == (whole / first).read_bytes()

    resumed = run(builds.resume / "train-vfn", [*args, "--resume", first], cut, **env)
    assert resumed.returncode == 0, resumed.stderr
    lines = classify(resumed.stderr)
    kinds = [k for k, _ in lines]
    at = kinds.index("resumed")
    assert kinds[at - 1 : at + 3] == ["created", "resumed", "blank", "starting"]
    m = lines[at][1]
    steps = int(m[3])
    assert (m[1], m[2], m[4], m[5]) == (first, "1", "2", "3") and steps > 0
    summaries = [(int(m[1]), int(m[2]), int(m[3])) for k, m in lines if k == "epoch"]
    assert summaries == [(2, 3, 2 * steps), (3, 3, 3 * steps)]
    assert [m[1] for k, m in lines if k == "checkpoint"] == [f"checkpoints/scaled_vfn_stage2_epoch_{e}.safetensors" for e in (2, 3)]
    assert dict(lines)["done"][1] == str(3 * steps)
    for name in (output, *(f"checkpoints/scaled_vfn_stage2_epoch_{e}.safetensors" for e in (1, 2, 3))):
        assert (cut / name).read_bytes() == (whole / name).read_bytes(), name


def test_resume_errors(builds: Builds, tmp_path: Path) -> None:
    first = run(builds.resume / "train-vfn", train_args(builds, "--epochs", "1"), tmp_path)
    assert first.returncode == 0, first.stderr
    ckpt = "checkpoints/scaled_vfn_epoch_1.safetensors"
    bad = run(builds.resume / "train-vfn", train_args(builds, "--epochs", "2", "--hidden-dim", "64", "--resume", ckpt), tmp_path)
    assert bad.returncode == 1
    assert bad.stderr.endswith(f"ERROR: failed to resume from {ckpt}: checkpoint has hidden_dim 2048 but --hidden-dim is 64\n")
    gone = run(builds.resume / "train-vfn", train_args(builds, "--resume", "checkpoints/none.safetensors"), tmp_path)
    assert gone.returncode == 1 and "\nERROR: failed to resume from checkpoints/none.safetensors: " in gone.stderr


# --- codebook-init -------------------------------------------------------------------------------------------------


CODEBOOK_TAIL = re.compile(
    r"\n=== Codebook Initialization Complete ===\n"
    r"  Files processed:        (\d+)\n  Files skipped:          (\d+)\n  Vectors collected:      (\d+)\n"
    r"  Vectors used \(k-means\): (\d+)\n  K-means iterations:     (\d+)\n  Mean quant\. error:      (\d+\.\d{6})\n"
    r"  Saved to:               (.+)\n$"
)


def test_codebook_help_and_unknown(builds: Builds, tmp_path: Path) -> None:
    for binary in (builds.plain, builds.guide):
        for flag in ("--help", "-h"):
            proc = run(binary / "codebook-init", [flag], tmp_path)
            assert (proc.returncode, proc.stdout, proc.stderr) == (0, "", CODEBOOK_HELP)
        proc = run(binary / "codebook-init", ["--corpus", "x", "--n-clusters", "5"], tmp_path)
        assert (proc.returncode, proc.stdout, proc.stderr) == (1, "", "Unknown argument: --n-clusters. Use --help for usage.\n")


def test_codebook_run_with_stub_translator(builds: Builds, tmp_path: Path) -> None:
    corpus = builds.data / "data" / "python_sample.jsonl"
    proc = run(
        builds.plain / "codebook-init",
        ["--corpus", str(corpus), "--output", "checkpoints/codebook_code.bin"],
        tmp_path,
        VOLT_FIXTURE_CODEBOOK_MS="200",
    )
    assert (proc.returncode, proc.stdout) == (0, ""), proc.stderr
    assert proc.stderr.startswith(
        "[codebook-init] Using StubTranslator (hash-based)\n=== Volt X Codebook Initialization ===\n"
        f"  Corpus:     {corpus}\n  Output:     checkpoints/codebook_code.bin\n  Max files:  1000000\n"
        f"  k:          65536\n\n[codebook-init] Reading corpus from {corpus}\n"
    )
    for pattern in (
        r"\[codebook-init\] Encoding complete: \d+ files, \d+ vectors, \d+ skipped",
        r"\[codebook-init\] Running k-means \(k=\d+, batch_size=8192, max_iter=50\)",
        r"\[kmeans\] Iteration 1/50, mean centroid movement: \d+\.\d{8}",
        r"\[codebook-init\] Saved codebook to checkpoints/codebook_code\.bin",
        r"\[codebook-init\] Mean L2 quantization error: \d+\.\d{6}",
    ):
        assert re.search(f"^{pattern}$", proc.stderr, re.M), pattern
    tail = CODEBOOK_TAIL.search(proc.stderr)
    assert tail and tail[7] == "checkpoints/codebook_code.bin" and int(tail[1]) > 0 and int(tail[3]) > 0
    raw = (tmp_path / "checkpoints" / "codebook_code.bin").read_bytes()
    magic, version, k, dim = struct.unpack("<4sIII", raw[:16])
    assert (magic, version, dim, len(raw)) == (b"VXCB", 1, 16, 16 + 4 * k * dim) and 0 < k <= 64


def test_codebook_learned_translator_and_errors(builds: Builds, tmp_path: Path) -> None:
    ck = builds.data / "checkpoints"
    learned = [
        "--corpus",
        str(builds.data / "data"),
        "--output",
        "out/codebook_code.bin",
        "--max-files",
        "5",
        "--tokenizer",
        str(ck / "code_tokenizer.json"),
        "--encoder",
        str(ck / "code_encoder.safetensors"),
        "--decoder",
        str(ck / "code_decoder.safetensors"),
    ]
    proc = run(builds.guide / "codebook-init", learned, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "StubTranslator" not in proc.stderr
    assert proc.stderr.startswith(
        f"[codebook-init] Loading LearnedTranslator...\n  Tokenizer: {ck / 'code_tokenizer.json'}\n"
        f"  Encoder:   {ck / 'code_encoder.safetensors'}\n  Decoder:   {ck / 'code_decoder.safetensors'}\n"
        "[codebook-init] LearnedTranslator loaded successfully\n=== Volt X Codebook Initialization ===\n"
    )
    tail = CODEBOOK_TAIL.search(proc.stderr)
    assert tail and tail[1] == "5" and tail[7] == "out/codebook_code.bin"

    no_encoder = run(builds.guide / "codebook-init", ["--tokenizer", str(ck / "code_tokenizer.json")], tmp_path)
    assert (no_encoder.returncode, no_encoder.stderr) == (1, "ERROR: --encoder required when --tokenizer is provided\n")
    plain = run(builds.plain / "codebook-init", learned, tmp_path)
    assert (plain.returncode, plain.stderr) == (
        1,
        "ERROR: --tokenizer requires the code-training feature.\nRecompile with: cargo run --features code-training --bin codebook-init\n",
    )
    default = run(builds.guide / "codebook-init", [], tmp_path)
    assert default.returncode == 1
    assert default.stderr.endswith(
        "[codebook-init] Reading corpus from D:/VoltData/phase0/the_stack_sample\nERROR: learn error: failed to open "
        "corpus file D:/VoltData/phase0/the_stack_sample: No such file or directory (os error 2)\n"
    )
    empty = tmp_path / "empty"
    empty.mkdir()
    none = run(builds.guide / "codebook-init", ["--corpus", str(empty)], tmp_path)
    assert (none.returncode, none.stderr.splitlines()[-1]) == (1, f"ERROR: learn error: no .jsonl files found in {empty}")


# --- data formats --------------------------------------------------------------------------------------------------

PROBLEM_FILES = [
    "code_training_combined.jsonl",
    "humaneval.jsonl",
    "mbpp.jsonl",
    "apps_introductory_train.jsonl",
    "apps_interview_train.jsonl",
    "apps_competition_train.jsonl",
]
PROBLEM = {"id": "t/1", "query": "Add two numbers.", "solution": "def add(a, b):\n    return a + b\n", "tests": ["assert add(1, 2) == 3"]}
CODE = "def f(x):\n    y = x + 1\n    return y * 2\n\n\nclass Handler:\n    pass\n"


def jsonl(path: Path, *lines: str | bytes) -> Path:
    path.write_bytes(b"".join((line if isinstance(line, bytes) else line.encode()) + b"\n" for line in lines))
    return path


def test_make_data_writes_the_real_record_formats(builds: Builds, tmp_path: Path) -> None:
    import json

    data = builds.data / "data"
    ids = []
    for name in PROBLEM_FILES:
        assert 20_000 <= (data / name).stat().st_size <= 70_000, name
        apps = name.startswith("apps_")
        for line in (data / name).read_text().splitlines():
            r = json.loads(line)
            assert set(r) == {"id", "query", "solution", "tests", "language"} | ({"difficulty"} if apps else set()), r
            assert all(isinstance(r[k], str) and r[k].strip() for k in ("id", "query", "solution")), r
            assert r["language"] == "python" and r.get("difficulty") == (name.split("_")[1] if apps else None)
            fn = re.match(r"(?:async )?def (\w+)\(", r["solution"])
            assert fn, r["solution"]
            if r["query"].startswith("Implement `"):
                assert re.match(rf"Implement `(async )?def {fn[1]}\(.*\)( -> .+)?`\.$", r["query"]), r["query"]
            assert isinstance(r["tests"], list) and r["tests"] and all(isinstance(t, str) for t in r["tests"])
            assert re.search(rf"{re.escape(fn[1])}\)\.parameters\) == \[", r["tests"][0]), r["tests"]
            ids.append(r["id"])
    assert len(ids) == len(set(ids)) and len(ids) > 200
    corpus = data / "python_sample.jsonl"
    assert 300_000 <= corpus.stat().st_size <= 340_000
    for line in corpus.read_text().splitlines():
        r = json.loads(line)
        assert set(r) == {"content", "language", "path", "size"} and r["language"] == "python"
        assert r["size"] == len(r["content"].encode()) and re.fullmatch(r"Lib/\w+\.py", r["path"]), r["path"]
    # Deterministic: a second run writes the same bytes.
    again = tmp_path / "again"
    proc = subprocess.run([sys.executable, str(FIXTURE / "make_data.py"), str(again)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    for sub in ("data", "checkpoints"):
        names = sorted(p.name for p in (builds.data / sub).iterdir())
        assert names == sorted(p.name for p in (again / sub).iterdir())
        assert all((builds.data / sub / n).read_bytes() == (again / sub / n).read_bytes() for n in names)


def test_train_vfn_loads_every_make_data_file(builds: Builds, tmp_path: Path) -> None:
    data = [a for name in PROBLEM_FILES for a in ("--data", str(builds.data / "data" / name))]
    proc = run(builds.guide / "train-vfn", [*train_args(builds, "--epochs", "1", "--batch-size", "32"), *data], tmp_path)
    assert proc.returncode == 0, proc.stderr
    for name in PROBLEM_FILES:
        assert f"[code_pairs] Loaded {records_in(builds, name)} problems from {builds.data / 'data' / name}\n" in proc.stderr
    total = records_in(builds, "mbpp.jsonl") + sum(records_in(builds, n) for n in PROBLEM_FILES)
    assert f"\n[code_pairs] Total: {total} problems from 7 files\nLoaded {total} problems total\n" in proc.stderr
    assert "WARNING" not in proc.stderr and "Skipped" not in proc.stderr


def test_train_vfn_data_errors_are_the_real_loaders(builds: Builds, tmp_path: Path) -> None:
    import json

    ok = jsonl(tmp_path / "ok.jsonl", json.dumps(PROBLEM), "", json.dumps({**PROBLEM, "id": "t/2", "language": None, "extra": {"a": [1, None]}}))
    no_tests = json.dumps({k: v for k, v in PROBLEM.items() if k != "tests"})
    missing = jsonl(tmp_path / "missing.jsonl", json.dumps(PROBLEM), "  ", no_tests)
    old_format = "  " + json.dumps({"content": CODE})  # make_data's former records; the real loader parses the untrimmed line
    old = jsonl(tmp_path / "old.jsonl", old_format)
    wrong = json.dumps({**PROBLEM, "tests": "assert add(1, 2) == 3"})
    bad = jsonl(tmp_path / "bad.jsonl", wrong)
    empty = jsonl(tmp_path / "empty.jsonl", "", " ")
    args = train_args(builds, "--epochs", "1", "--batch-size", "1", "--warmup", "1", data=str(ok))
    for path in (missing, old, bad, empty):
        args += ["--data", str(path)]
    proc = run(builds.guide / "train-vfn", args, tmp_path)
    assert proc.returncode == 0, proc.stderr
    # serde_json: a missing field is found after the closing brace, a wrong type after the value it read.
    col = wrong.index('"tests": ') + len('"tests": "assert add(1, 2) == 3"')
    assert (
        f"Loading datasets...\n[code_pairs] Loaded 2 problems from {ok}\n"
        f"[code_pairs] WARNING: failed to load {missing}: learn error: Failed to parse JSON at line 3: "
        f"missing field `tests` at line 1 column {len(no_tests)}\n"
        f"[code_pairs] WARNING: failed to load {old}: learn error: Failed to parse JSON at line 1: "
        f"missing field `id` at line 1 column {len(old_format)}\n"
        f"[code_pairs] WARNING: failed to load {bad}: learn error: Failed to parse JSON at line 1: "
        f'invalid type: string "assert add(1, 2) == 3", expected a sequence at line 1 column {col}\n'
        f"[code_pairs] WARNING: failed to load {empty}: learn error: Dataset file is empty or contains no valid problems\n"
        "[code_pairs] Total: 2 problems from 5 files\nLoaded 2 problems total\n"
    ) in proc.stderr
    assert (tmp_path / "checkpoints" / "scaled_vfn.safetensors").is_file()

    none = run(builds.guide / "train-vfn", train_args(builds, data=str(old)) + ["--data", str(bad)], tmp_path)
    assert none.returncode == 1
    assert none.stderr.endswith(
        f'learn error: Failed to parse JSON at line 1: invalid type: string "assert add(1, 2) == 3", expected a sequence at line 1 column {col}\n'
        "ERROR: failed to load datasets: learn error: failed to load any problems from 2 dataset files\n"
    )

    # An empty query or solution fails the translator's encode: the problem is skipped.
    blank = jsonl(tmp_path / "blank.jsonl", json.dumps(PROBLEM), json.dumps({**PROBLEM, "id": "t/3", "query": ""}))
    proc = run(builds.guide / "train-vfn", train_args(builds, "--epochs", "1", "--batch-size", "1", data=str(blank)), tmp_path)
    assert proc.returncode == 0, proc.stderr
    skipped = r"\[code_pairs\] Skipped 1/2 problems \(encoding failed\)"
    assert re.search(rf"\nEncoding problems to FramePairs\.\.\.\n{skipped}\nEncoded \d+ pairs", proc.stderr), proc.stderr
    only = jsonl(tmp_path / "only.jsonl", json.dumps({**PROBLEM, "solution": ""}))
    proc = run(builds.guide / "train-vfn", train_args(builds, data=str(only)), tmp_path)
    assert proc.returncode == 1
    skipped = r"\[code_pairs\] Skipped 1/1 problems \(encoding failed\)"
    assert re.search(rf"{skipped}\nEncoded 0 pairs .*\nERROR: no valid FramePairs generated\n$", proc.stderr), proc.stderr


def codebook_counts(stderr: str) -> tuple[int, int, int]:
    tail = CODEBOOK_TAIL.search(stderr)
    assert tail, stderr
    assert f"[codebook-init] Encoding complete: {tail[1]} files, {tail[3]} vectors, {tail[2]} skipped\n" in stderr
    return int(tail[1]), int(tail[2]), int(tail[3])


def test_codebook_reads_stack_entries_like_the_real_reader(builds: Builds, tmp_path: Path) -> None:
    import json

    corpus = jsonl(
        tmp_path / "corpus.jsonl",
        json.dumps({"content": CODE, "language": "python", "path": "a.py", "size": len(CODE)}),  # read
        json.dumps({"content": CODE, "language": "rust"}),  # read: no language is filtered out
        json.dumps({"content": CODE}),  # skipped: no `language`
        json.dumps(PROBLEM),  # skipped: a code_pairs problem is no StackEntry
        "not json",  # skipped
        json.dumps({"content": "x = 1", "language": "python"}),  # skipped: under 50 bytes
        "",  # not counted
        b'{"content": "\xff\xfe", "language": "python"}',  # skipped: not UTF-8 (and the reader reads on)
        json.dumps({"content": CODE, "language": "python", "size": -1}),  # skipped: size is a usize
        json.dumps({"content": "x = 1\n" * 2000, "language": "python"}),  # 12000 bytes: over the StubTranslator's 10000
        json.dumps({"content": CODE, "language": "python"}),  # read
    )
    lines_of_code = len([line for line in CODE.splitlines() if line.strip()])
    stub = run(builds.plain / "codebook-init", ["--corpus", str(corpus), "--output", "stub.bin"], tmp_path)
    assert stub.returncode == 0, stub.stderr
    assert codebook_counts(stub.stderr) == (3, 7, 3 * lines_of_code)
    ck = builds.data / "checkpoints"
    learned = ["--tokenizer", str(ck / "code_tokenizer.json"), "--encoder", str(ck / "code_encoder.safetensors")]
    learned += ["--decoder", str(ck / "code_decoder.safetensors")]
    proc = run(builds.guide / "codebook-init", ["--corpus", str(corpus), "--output", "learned.bin", *learned], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert codebook_counts(proc.stderr) == (4, 6, 3 * lines_of_code + 16)

    # make_data's python_sample: every record is read with the LearnedTranslator; the stub skips those over 10000 bytes.
    sample = builds.data / "data" / "python_sample.jsonl"
    sizes = [len(json.loads(line)["content"].encode()) for line in sample.read_text().splitlines()]
    big = sum(1 for n in sizes if n > 10_000)
    proc = run(builds.guide / "codebook-init", ["--corpus", str(sample), "--output", "sample.bin", *learned], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert codebook_counts(proc.stderr)[:2] == (len(sizes), 0)
    proc = run(builds.plain / "codebook-init", ["--corpus", str(sample), "--output", "sample.bin"], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert codebook_counts(proc.stderr)[:2] == (len(sizes) - big, big)

    # The data directory: the code_pairs files (before python_sample.jsonl by name) are all skipped.
    proc = run(builds.guide / "codebook-init", ["--corpus", str(builds.data / "data"), "--output", "dir.bin", "--max-files", "3", *learned], tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert codebook_counts(proc.stderr)[:2] == (3, sum(records_in(builds, name) for name in PROBLEM_FILES))
