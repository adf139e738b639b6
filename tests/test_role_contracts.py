"""The roles' entry points (tasks_from) and their order: each is declared in meta/argument_specs.yml, names the facts
it needs from an earlier one, and fails at once, in one line, when that one has not run. Fast: the host is one
nothing listens on, so any task that reached it would fail UNREACHABLE."""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from conftest import REPO

ROLES = ("repo_build", "rust_toolchain", "cuda_check", "training_tmux", "bootstrap")

# (role, entry point, the one it needs first)
ORDER = [
    ("repo_build", "start", "checkout"),
    ("repo_build", "wait", "start"),
    ("repo_build", "cache_save", "wait"),
    ("rust_toolchain", "finish", "start"),
]


def specs(role: str) -> dict:
    return yaml.safe_load((REPO / "roles" / role / "meta/argument_specs.yml").read_text())["argument_specs"]


def used_entry_points() -> set[tuple[str, str]]:
    """(role, tasks_from) of every include_role/import_role in the playbooks and the roles' own scenarios."""
    found = set()
    files = list((REPO / "playbooks").glob("*.yml")) + list((REPO / "roles").glob("*/molecule/*/*.yml"))
    for path in files:
        text = path.read_text()
        for m in re.finditer(r"name: (\w+)\n\s+tasks_from: (\w+)", text):
            found.add((m.group(1), m.group(2)))
    return found


@pytest.mark.parametrize("role", ROLES)
def test_every_entry_point_is_declared_with_its_options(role):
    declared = specs(role)
    assert "main" in declared
    for name, spec in declared.items():
        assert (REPO / "roles" / role / "tasks" / f"{name}.yml").is_file(), f"{role}: {name} is declared but has no tasks/{name}.yml"
        assert "options" in spec and spec.get("short_description"), f"{role}: {name}"
    for used_role, entry in used_entry_points():
        if used_role == role:
            assert entry in declared, f"{role}: tasks_from {entry} is used but not declared in meta/argument_specs.yml"


@pytest.mark.parametrize("role, entry, first", ORDER, ids=[f"{r}:{e}" for r, e, _ in ORDER])
def test_the_description_names_what_an_entry_point_needs(role, entry, first):
    description = " ".join(" ".join(specs(role)[entry].get("description", [])).split())
    assert f"run tasks_from: {first} first" in description, description
    assert re.search(r"Needs _{1,2}" + role, description), description
    tasks = yaml.safe_load((REPO / "roles" / role / "tasks" / f"{entry}.yml").read_text())
    assert tasks[0]["ansible.builtin.assert"]["fail_msg"] == f"{role}: run tasks_from: {first} first"  # the first task


@pytest.fixture(scope="module")
def nowhere(tmp_path_factory) -> Path:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    inventory = tmp_path_factory.mktemp("contracts") / "hosts.ini"
    inventory.write_text(f"[volt]\nnowhere ansible_host=127.0.0.1 ansible_port={port} ansible_user=root\n")
    return inventory


def run(inventory: Path, tasks: list[dict]) -> dict:
    play = inventory.parent / "play.yml"
    play.write_text(yaml.safe_dump([{"hosts": "all", "gather_facts": False, "tasks": tasks}], sort_keys=False))
    env = {**os.environ, "ANSIBLE_CONFIG": str(REPO / "ansible.cfg"), "ANSIBLE_ROLES_PATH": str(REPO / "roles"),
           "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json", "ANSIBLE_NOCOLOR": "1",
           "ANSIBLE_CONTROL_PATH_DIR": str(inventory.parent / "cp")}
    proc = subprocess.run([str(Path(sys.executable).parent / "ansible-playbook"), "-i", str(inventory), str(play)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    doc = json.loads(proc.stdout)
    doc["returncode"] = proc.returncode
    return doc


def include(role: str, entry: str) -> dict:
    return {"name": f"{role} {entry}", "ansible.builtin.include_role": {"name": role, "tasks_from": entry}}


@pytest.mark.parametrize("role, entry, first", ORDER, ids=[f"{r}:{e}" for r, e, _ in ORDER])
def test_an_entry_point_called_out_of_order_fails_at_once_in_one_line(nowhere, role, entry, first):
    doc = run(nowhere, [include(role, entry)])
    results = [(t["task"]["name"], t["hosts"].get("nowhere", {})) for play in doc["plays"] for t in play["tasks"]]
    failed = [(name, r) for name, r in results if r.get("failed") or r.get("unreachable")]
    assert doc["returncode"] == 2 and len(failed) == 1, results
    name, result = failed[0]
    assert name == f"{role} : This entry point needs tasks_from {first} first"
    assert result["msg"] == f"{role}: run tasks_from: {first} first"
    assert doc["stats"]["nowhere"]["unreachable"] == 0  # nothing reached the host


def test_no_role_waits_on_ansibles_internal_async_results():
    for role in ROLES:
        for path in (REPO / "roles" / role).rglob("*.yml"):
            text = path.read_text()
            assert "results_file" not in text and '"started": true' not in text, f"{path} reads Ansible's async internals"
