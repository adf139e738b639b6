"""A whole campaign on the local backend, as a user runs it: check, provision, prepare, sync, train, backup, destroy."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from conftest import REPO

pytestmark = pytest.mark.podman


def guide_layout(project, tmp_path):
    """The fixture's tiny data laid out where volt_data's sources point (the guide's D:\\VoltData tree)."""
    gen = tmp_path / "gen"
    subprocess.run([sys.executable, str(REPO / "tests/fixtures/volt-x/make_data.py"), str(gen)], check=True, capture_output=True)
    root = tmp_path / "VoltData"
    for item in yaml.safe_load((project.root / "group_vars/all.yml").read_text())["volt_data"]["items"]:
        if item["enabled"]:
            dst = root / item["src"]
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(gen / item["dest"], dst)
    project.spec(volt_data={"local_root": str(root)})


@pytest.mark.reuse_build  # needs the binaries, does not test building them (tests/buildshare.py)
def test_whole_campaign_on_the_local_backend(project, tmp_path):
    guide_layout(project, tmp_path)
    assert "python_sample" in project.cli("check").stdout
    project.cli("provision")
    assert "prepare ok" in project.cli("run", "prepare", timeout=900).stdout
    assert "sync ok" in project.cli("run", "sync").stdout
    project.cli("train", "--stage", "all")

    deadline = time.monotonic() + 300
    while True:
        status = project.cli("status").stdout
        done = [ln for ln in status.splitlines() if " done " in f" {ln} "]
        if sum(ln.split()[0] in ("phase03", "stage3") for ln in done) == 2 or time.monotonic() > deadline:
            break
        time.sleep(3)
    assert "stage3" in status and any(ln.startswith("stage3") and " done " in ln for ln in status.splitlines()), status

    assert "Final model saved: checkpoints/scaled_vfn_stage1.safetensors" in project.cli("logs", "stage1", "-n", "20").stdout
    png = tmp_path / "loss.png"
    project.cli("plot", "-o", str(png))
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 5000

    assert "backup ok" in project.cli("run", "backup", "-e", "backup_stable_s=0").stdout
    home = json.loads((project.root / "runs" / "volt-x-phase21" / "home.json").read_text())["files"]
    for out in ("checkpoints/codebook_code.bin", "checkpoints/scaled_vfn_stage1.safetensors",
                "checkpoints/scaled_vfn_stage2.safetensors", "checkpoints/scaled_vfn.safetensors"):
        assert out in home, sorted(home)
    project.cli("destroy", "--yes")
    assert project.double().containers() == []
