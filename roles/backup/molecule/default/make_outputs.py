#!/usr/bin/env python3
"""Fake Volt-X training output under ROOT, shaped like training_tmux leaves it mid-stage-2."""

import os
import sys
import time

root = sys.argv[1]
now = time.time()
files = {  # path: (size, age in seconds); the scenario runs with backup_stable_s: 3600
    "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_1.safetensors": (300_000, 9000),  # stage 1, archived when it finished
    "checkpoints/epochs/stage1/scaled_vfn_stage1_epoch_2.safetensors": (300_000, 8000),
    "checkpoints/scaled_vfn_stage1.safetensors": (300_000, 7900),  # stage 1's output
    "checkpoints/scaled_vfn_stage2_epoch_1.safetensors": (300_000, 4000),  # stage 2, live
    "checkpoints/scaled_vfn_stage2_epoch_2.safetensors": (300_000, 0),  # stage 2 is writing it right now
    "checkpoints/scaled_vfn_stage2.safetensors.tmp": (1000, 4000),  # an output being written (tmp + rename)
    "checkpoints/codebook_code.bin": (200_000, 5000),
    "logs/phase03.log": (5000, 5000),
    "logs/phase21_stage1.log": (8000, 7900),
    "logs/phase21_stage2.log": (3000, 4000),
}
for rel, (size, age) in files.items():
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as f:
        f.write(os.urandom(size))
    os.utime(path, (now - age, now - age))
with open(os.path.join(root, "checkpoints/.volt-epochs"), "w") as f:
    f.write("stage2\n")
for job, state in (("phase03", "done"), ("stage1", "done"), ("stage2", "running")):
    with open(os.path.join(root, "logs", job + ".status"), "w") as f:
        f.write(f"job={job}\nstate={state}\n")
