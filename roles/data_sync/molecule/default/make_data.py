#!/usr/bin/env python3
"""Make a local data tree shaped like the guide's (group_vars volt_data defaults) for tests and the benchmark.

JSONL items are real code, the Python standard library's .py files, in the records Volt-X's binaries read: the
training sets as code_pairs problems ({"id", "query", "solution", "tests", "language"}), the Stack sets as
corpus records ({"content", "language", "path"}); repeated to the wanted size; checkpoints are safetensors-like
files (a JSON header, then random, incompressible bytes).
Sizes in MB (1e6 bytes); the guide's sizes scaled by --scale, the Stack sets given on their own.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sysconfig
from pathlib import Path

GUIDE_MB = {  # the guide's File Reference sizes; APPS "varies": 1 MB each here
    "checkpoints/code_tokenizer.json": 2.3,
    "checkpoints/code_encoder.safetensors": 20.6,
    "checkpoints/code_decoder.safetensors": 21.0,
    "phase0/code_training_combined.jsonl": 0.3,
    "phase0/humaneval/data/humaneval.jsonl": 0.2,
    "phase0/mbpp/data/mbpp.jsonl": 0.1,
    "phase2/apps/data/apps_introductory_train.jsonl": 1.0,
    "phase2/apps/data/apps_interview_train.jsonl": 1.0,
    "phase2/apps/data/apps_competition_train.jsonl": 1.0,
}
STACK_PYTHON = "phase0/the_stack_sample/python/python_sample.jsonl"
STACK_FULL = "phase5/the_stack_full"

_corpus: dict[str, list[bytes]] = {}


def corpus(kind: str = "stack") -> list[bytes]:
    """One JSONL line per stdlib .py file (site-packages left out), in a fixed order: a corpus record (kind "stack") or
    a code_pairs problem (kind "pairs": the module's docstring or name as the query, its source as the solution)."""
    if kind not in _corpus:
        root = Path(sysconfig.get_paths()["stdlib"])
        lines = _corpus[kind] = []
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames[:] = sorted(d for d in dirnames if d not in ("site-packages", "dist-packages", "__pycache__"))
            for f in sorted(filenames):
                if f.endswith(".py"):
                    p = Path(dirpath, f)
                    try:
                        text = p.read_text(encoding="utf-8")
                    except (OSError, UnicodeDecodeError):
                        continue
                    rel = str(p.relative_to(root))
                    if kind == "stack":
                        rec = {"content": text, "language": "python", "path": rel}
                    else:
                        mod = rel.removesuffix(".py").replace("/", ".")
                        rec = {"id": f"stdlib/{len(lines)}", "query": f"Write the module {mod}.", "solution": text,
                               "tests": [f"import {mod}"], "language": "python"}
                    lines.append((json.dumps(rec) + "\n").encode())
    return _corpus[kind]


def write_jsonl(path: Path, size: int, offset: int = 0, kind: str = "stack", vary: bool = False) -> None:
    """Whole lines of the stdlib corpus, starting at line `offset`, until `size` bytes (at least one line).

    vary: each pass over the corpus after the first tags every source line of the records with the pass number
    (`#<n> `), so a file bigger than the corpus does not repeat itself: rsync's block matching would otherwise find the
    later passes in the earlier ones (a resumed transfer would look free). The ratio zstd gets stays about the same."""
    lines = corpus(kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    i = offset
    with open(path, "wb") as f:
        while written < size or written == 0:
            line = lines[i % len(lines)]
            cycle = (i - offset) // len(lines)
            if vary and cycle:
                line = line.replace(b"\\n", b"\\n#%d " % cycle)
            f.write(line)
            written += len(line)
            i += 1


def write_safetensors(path: Path, size: int, seed: int) -> None:
    header = json.dumps({"weight": {"dtype": "F32", "shape": [max(1, size // 4)], "data_offsets": [0, size]}}).encode()
    rng = random.Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as f:
        f.write(len(header).to_bytes(8, "little") + header)
        left = size
        while left > 0:
            n = min(left, 8 << 20)
            f.write(rng.randbytes(n))
            left -= n


def make(root: Path, scale: float = 1.0, stack_python_mb: float = 5.0, stack_full_mb: float = 3.0, stack_full_files: int = 3) -> dict:
    """Write the tree under root; return {relative path: size}."""
    out = {}
    for i, (rel, mb) in enumerate(GUIDE_MB.items()):
        size = max(1, int(mb * scale * 1e6))
        p = root / rel
        if rel.endswith(".safetensors"):
            write_safetensors(p, size, seed=i)
        else:
            write_jsonl(p, size, offset=i * 97, kind="pairs")
        out[rel] = p.stat().st_size
    write_jsonl(root / STACK_PYTHON, int(stack_python_mb * 1e6), offset=1000)
    out[STACK_PYTHON] = (root / STACK_PYTHON).stat().st_size
    for k in range(stack_full_files):
        rel = f"{STACK_FULL}/lang_{k}.jsonl"
        write_jsonl(root / rel, int(stack_full_mb * 1e6 / stack_full_files), offset=2000 + 500 * k)
        out[rel] = (root / rel).stat().st_size
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("root")
    ap.add_argument("--scale", type=float, default=0.05, help="the guide's small files times this")
    ap.add_argument("--stack-python-mb", type=float, default=4.0)
    ap.add_argument("--stack-full-mb", type=float, default=2.0)
    a = ap.parse_args()
    sizes = make(Path(a.root), a.scale, a.stack_python_mb, a.stack_full_mb)
    print(json.dumps({"root": a.root, "bytes": sum(sizes.values()), "files": len(sizes)}))


if __name__ == "__main__":
    main()
