"""repo_build on a real SSH test host: builds once, rebuilds when the ref moves, shows the log on failure, reuses a cache."""

from __future__ import annotations

import pytest
from conftest import REPO

pytestmark = pytest.mark.podman

SERVE = REPO / "molecule/resources/serve-volt-x.yml"
FIXTURE = REPO / "tests/fixtures/volt-x"


def play(repo_build_vars: str = "", toolchain: bool = True) -> str:
    rust = """
    - name: Rust from the controller's own toolchain
      ansible.builtin.include_role:
        name: rust_toolchain
      vars:
        rust_toolchain_method: archive
        rust_toolchain_archive: "{{ lookup('ansible.builtin.pipe', 'python3 -m volt_ansible.local.toolchain') }}"
        rust_toolchain_apt_packages: []
""" if toolchain else ""
    return f"""
- hosts: volt
  gather_facts: false
  tasks:
    - name: Serve the fixture
      ansible.builtin.include_tasks: {SERVE}
      vars:
        volt_x_fixture_src: {FIXTURE}
{rust}
    - name: Build
      ansible.builtin.include_role:
        name: repo_build
      vars:
        repo_build_repo: file:///srv/volt-x.git
        repo_build_heartbeat_s: 1
{repo_build_vars}
"""


def push_change(host, line: str) -> None:
    """Move the served branch the way a developer would: clone, append a line to lib.rs, push."""
    host.exec("rm -rf /tmp/w && git clone -q /srv/volt-x.git /tmp/w && cd /tmp/w && "
              f"echo {line!r} >> crates/volt-learn/src/lib.rs && "
              "git -c user.name=t -c user.email=t@t commit -qam change && git push -q origin main")


def recap(proc) -> str:
    return next(ln for ln in proc.stdout.splitlines() if ln.startswith("vt-"))


def test_builds_once_and_rebuilds_when_the_ref_moves(make_host):
    host = make_host("dev")
    first = host.playbook(play(), check=True)
    assert "Start cargo build" in first.stdout
    assert host.exec("/root/volt-x/target/release/train-vfn --epochs x 2>&1 || true").stdout  # it runs
    assert host.exec("ls /root/volt-x/checkpoints /root/volt-x/data /root/volt-x/logs").returncode == 0

    again = host.playbook(play(), check=True)
    assert "changed=0" in recap(again), again.stdout[-3000:]
    assert "TASK [repo_build : Start cargo build" not in again.stdout  # build.yml was not even included

    push_change(host, "// moved")
    moved = host.playbook(play(), check=True)
    assert "Start cargo build" in moved.stdout and "changed=0" not in recap(moved)
    commit = host.exec("git -C /srv/volt-x.git rev-parse main").stdout.strip()
    assert host.exec("git -C /root/volt-x rev-parse HEAD").stdout.strip() == commit


def test_failed_build_shows_the_end_of_the_log(make_host):
    host = make_host("dev")
    host.playbook(play(), check=True)
    push_change(host, "fn broken( {")
    proc = host.playbook(play("        repo_build_log_lines: 50"))
    assert proc.returncode != 0
    assert "cargo build failed (rc=101); last 50 lines of /root/volt-x/logs/build.log" in proc.stdout
    assert "error: " in proc.stdout and "volt-learn" in proc.stdout


def test_missing_cargo_is_named_with_the_fix(make_host):
    host = make_host("dev")
    proc = host.playbook(play(toolchain=False))
    assert proc.returncode != 0
    assert "repo_build: 'cargo' is not runnable" in proc.stdout and "run the rust_toolchain role first" in proc.stdout


def test_build_cache_skips_compiling_on_a_new_instance(make_host, tmp_path):
    cache = tmp_path / "cache"
    vars_ = f"        repo_build_cache: true\n        repo_build_cache_dir: {cache}"
    first = make_host("dev")
    out = first.playbook(play(vars_), check=True)
    assert "Start cargo build" in out.stdout and len(list(cache.glob("*.tar.gz"))) == 1

    second = make_host("dev")
    out = second.playbook(play(vars_), check=True)
    assert "Restore the cached binaries" in out.stdout
    assert second.exec("test -e /root/volt-x/logs/build.log", check=False).returncode != 0  # cargo never ran here
    assert second.exec("test -x /root/volt-x/target/release/codebook-init && test -x /root/volt-x/target/release/train-vfn").returncode == 0
    rerun = second.playbook(play(vars_), check=True)
    assert "changed=0" in recap(rerun)


def test_a_toolchain_id_lets_a_cache_hit_skip_rust(make_host, tmp_path):
    """With repo_build_toolchain_id the key needs no cargo: a host without Rust gets the cached binaries."""
    cache = tmp_path / "cache"
    vars_ = f"        repo_build_cache: true\n        repo_build_cache_dir: {cache}\n        repo_build_toolchain_id: archive:test|image"
    built = make_host("dev")
    built.playbook(play(vars_), check=True)
    assert len(list(cache.glob("*.tar.gz"))) == 1 and not list(cache.glob("*.part"))

    bare = make_host("dev")
    assert bare.exec("command -v cargo", check=False).returncode != 0
    out = bare.playbook(play(vars_, toolchain=False), check=True)
    assert "Restore the cached binaries" in out.stdout and "repo_build : Find cargo" not in out.stdout
    assert bare.exec("/root/volt-x/target/release/train-vfn --help 2>&1 || true").stdout  # it runs
    assert "changed=0" in recap(bare.playbook(play(vars_, toolchain=False), check=True))

    other = vars_.replace("archive:test|image", "archive:other|image")  # another toolchain: a miss, and cargo is needed
    proc = bare.playbook(play(other, toolchain=False))
    assert proc.returncode != 0 and "repo_build: 'cargo' is not runnable" in proc.stdout
