"""repo_build on a real SSH test host: builds once, rebuilds when the ref moves, shows the log on failure, reuses a cache."""

from __future__ import annotations

import json
import re
import shlex
import shutil
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest
from conftest import REPO
from procs import comm, descendants
from testhost import container_pid

pytestmark = pytest.mark.podman

SERVE = REPO / "molecule/resources/serve-volt-x.yml"
FIXTURE = REPO / "tests/fixtures/volt-x"


def play(repo_build_vars: str = "", toolchain: bool = True, serve: bool = True, plan: bool = False) -> str:
    rust = """
    - name: Rust from the controller's own toolchain
      ansible.builtin.include_role:
        name: rust_toolchain
      vars:
        rust_toolchain_method: archive
        rust_toolchain_archive: "{{ lookup('ansible.builtin.pipe', 'python3 -m volt_ansible.local.toolchain') }}"
        rust_toolchain_apt_packages: []
""" if toolchain else ""
    served = f"""
    - name: Serve the fixture
      ansible.builtin.include_tasks: {SERVE}
      vars:
        volt_x_fixture_src: {FIXTURE}
""" if serve else ""
    role_vars = f"""      vars:
        repo_build_repo: file:///srv/{'volt-x.git' if serve else 'git/volt-x.git'}
{repo_build_vars}"""
    # tasks_from plan (what playbooks/up.yml runs before the bootstrap), on the controller: checkout then reuses its lookup
    planned = f"""
    - name: Plan
      ansible.builtin.include_role:
        name: repo_build
        tasks_from: plan
{role_vars}
    - name: Show the plan
      ansible.builtin.debug:
        msg: "compile expected: {{{{ repo_build_compile_expected }}}}"
""" if plan else ""
    return f"""
- hosts: volt
  gather_facts: false
  tasks:
{planned}{served}{rust}
    - name: Build
      ansible.builtin.include_role:
        name: repo_build
{role_vars}
"""


def git(*args: str, cwd: Path | None = None) -> str:
    env = {"GIT_AUTHOR_DATE": "2026-01-01T00:00:00Z", "GIT_COMMITTER_DATE": "2026-01-01T00:00:00Z", "PATH": "/usr/bin:/bin"}
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, env=env, check=True,
                          capture_output=True, text=True).stdout.strip()


class Origin:
    """The fixture as a bare repository on the controller (GitHub's stand-in), which test hosts mount read-only at
    /srv/git: the controller resolves the commit from the same repository the instance clones."""

    def __init__(self, root: Path):
        self.root = root
        self.bare = root / "git" / "volt-x.git"
        work = root / "work"
        shutil.copytree(FIXTURE, work, ignore=shutil.ignore_patterns("target", "__pycache__"))
        git("init", "-q", "-b", "main", cwd=work)
        git("add", "-A", cwd=work)
        git("commit", "-qm", "fixture", cwd=work)
        git("clone", "-q", "--bare", str(work), str(self.bare))
        git("remote", "add", "origin", str(self.bare), cwd=work)
        self.work = work

    @property
    def volume(self) -> str:
        return f"{self.root / 'git'}:/srv/git:ro"

    def vars(self, extra: str = "") -> str:
        return f"        repo_build_repo_controller: file://{self.bare}\n" + extra

    def head(self) -> str:
        return git("--git-dir", str(self.bare), "rev-parse", "main")

    def push(self, path: str, old: str, new: str) -> str:
        """Change a file on main the way a developer would; the new commit."""
        f = self.work / path
        f.write_text(f.read_text().replace(old, new, 1) if old else f.read_text() + new)
        git("commit", "-qam", "change", cwd=self.work)
        git("push", "-q", "origin", "main", cwd=self.work)
        return self.head()


@pytest.fixture
def origin(tmp_path):
    return Origin(tmp_path / "origin")


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

    # a build past repo_build_timeout_s (build.rs sleeping 600 s) is killed, cargo and all, and named with the knob
    slow = host.playbook(play("        repo_build_timeout_s: 3\n        repo_build_env: {VOLT_FIXTURE_BUILD_DELAY_MS: '600000'}"))
    assert slow.returncode != 0
    assert ("cargo build did not end within 3 s (repo_build_timeout_s: raise it for a slower machine); last 50 lines of "
            "/root/volt-x/logs/build.log") in slow.stdout, slow.stdout[-3000:]
    left = [comm(p) for p in descendants(container_pid(host.name))]
    assert not [c for c in left if c in ("cargo", "rustc", "build.sh", "timeout") or c.startswith("build-script")], left


def test_missing_cargo_is_named_with_the_fix(make_host):
    host = make_host("dev")
    proc = host.playbook(play(toolchain=False))
    assert proc.returncode != 0
    assert "repo_build: 'cargo' is not runnable" in proc.stdout and "run the rust_toolchain role first" in proc.stdout


def test_build_cache_skips_compiling_on_a_new_instance(make_host, tmp_path, origin):
    cache = tmp_path / "cache"
    vars_ = origin.vars(f"        repo_build_cache: true\n        repo_build_cache_dir: {cache}")
    first = make_host("dev", volumes=[origin.volume])
    out = first.playbook(play(vars_, serve=False), check=True)
    assert "Start cargo build" in out.stdout and len(list(cache.glob("*.tar.gz"))) == 1
    record = json.loads(next(cache.glob("*.v3.json")).read_text())  # who built it, when, from what, every file's sha256
    assert record["commit"] == origin.head() and record["built_by"]["host"] == first.name and record["built_at"] > 0
    assert set(record["files"]) == {"target/release/codebook-init", "target/release/train-vfn", "target/release/.volt-build-stamp",
                                    # what each binary's --help says, kept with it (whether train-vfn can resume is read there)
                                    "target/release/.volt-help/codebook-init.txt", "target/release/.volt-help/train-vfn.txt"}
    assert record["files"]["target/release/train-vfn"] == first.exec("sha256sum /root/volt-x/target/release/train-vfn").stdout.split()[0]

    second = make_host("dev", volumes=[origin.volume])
    out = second.playbook(play(vars_, serve=False), check=True)
    assert "Restore the cached binaries" in out.stdout
    assert second.exec("test -e /root/volt-x/logs/build.log", check=False).returncode != 0  # cargo never ran here
    assert second.exec("test -x /root/volt-x/target/release/codebook-init && test -x /root/volt-x/target/release/train-vfn").returncode == 0
    usage = second.exec("cat /root/volt-x/target/release/.volt-help/train-vfn.txt").stdout  # restored with the binaries
    assert "--data" in usage and "--resume" not in usage  # the default build, like Volt-X's main: no resume option
    rerun = second.playbook(play(vars_, serve=False), check=True)
    assert "changed=0" in recap(rerun)


def test_a_toolchain_id_lets_a_cache_hit_skip_rust(make_host, tmp_path, origin):
    """With repo_build_toolchain_id the key needs no cargo: a host without Rust gets the cached binaries."""
    cache = tmp_path / "cache"
    vars_ = origin.vars(f"        repo_build_cache: true\n        repo_build_cache_dir: {cache}\n"
                        "        repo_build_toolchain_id: archive:test|image")
    built = make_host("dev", volumes=[origin.volume])
    built.playbook(play(vars_, serve=False), check=True)
    assert len(list(cache.glob("*.tar.gz"))) == 1 and not list(cache.glob("*.part"))

    bare = make_host("dev", volumes=[origin.volume])
    assert bare.exec("command -v cargo", check=False).returncode != 0
    out = bare.playbook(play(vars_, toolchain=False, serve=False, plan=True), check=True)
    assert "Restore the cached binaries" in out.stdout and "repo_build : Find cargo" not in out.stdout
    assert '"msg": "compile expected: False"' in out.stdout
    assert bare.exec("/root/volt-x/target/release/train-vfn --help 2>&1 || true").stdout  # it runs
    assert "changed=0" in recap(bare.playbook(play(vars_, toolchain=False, serve=False), check=True))

    other = vars_.replace("archive:test|image", "archive:other|image")  # another toolchain: a miss, and cargo is needed
    proc = bare.playbook(play(other, toolchain=False, serve=False, plan=True))
    assert proc.returncode != 0 and "repo_build: 'cargo' is not runnable" in proc.stdout
    assert '"msg": "compile expected: True"' in proc.stdout

    # An entry altered on the controller's disk after it was saved is refused with one line and never restored:
    # a host without Rust then needs cargo (compile instead) and says so.
    entry = next(cache.glob("*.v3.tar.gz"))
    tampered = tmp_path / "tampered"
    with tarfile.open(entry) as tar:
        tar.extractall(tampered, filter="data")
    (tampered / "target/release/train-vfn").write_text("#!/bin/sh\necho planted > /tmp/planted\n")
    with tarfile.open(entry, "w:gz") as tar:
        for f in sorted(p for p in (tampered / "target/release").rglob("*") if p.is_file()):
            tar.add(f, str(f.relative_to(tampered)))
    victim = make_host("dev", volumes=[origin.volume])
    proc = victim.playbook(play(vars_, toolchain=False, serve=False, plan=True))
    text = " ".join(proc.stdout.split())
    assert '"msg": "compile expected: True"' in proc.stdout  # the plan's lookup refused it too, and checkout reused it
    assert f"repo_build: refusing build cache entry {entry.name[:12]}: target/release/train-vfn in {entry.name} has sha256 " in text
    assert "compiling instead" in text and re.search(r"Restore the cached binaries instead of compiling\] \**\nskipping:", proc.stdout)
    assert proc.returncode != 0 and "repo_build: 'cargo' is not runnable" in proc.stdout  # compile instead: Rust needed
    assert victim.exec("test -e /root/volt-x/target/release/train-vfn", check=False).returncode != 0


def test_the_checkout_must_be_at_the_commit_the_controller_resolved(make_host, tmp_path, origin):
    """The build cache's key is the commit the controller resolves: a host whose clone is elsewhere fails, one line."""
    expected = origin.head()
    lying = Origin(tmp_path / "lying")  # what the host sees at the same URL: main one commit further
    found = lying.push("README.md", "", "\nplanted\n")
    host = make_host("dev", volumes=[lying.volume])
    vars_ = (f"        repo_build_repo_controller: file://{origin.bare}\n"
             f"        repo_build_cache: true\n        repo_build_cache_dir: {tmp_path / 'cache'}\n"
             "        repo_build_toolchain_id: archive:test|image")
    proc = host.playbook(play(vars_, toolchain=False, serve=False))
    assert proc.returncode != 0
    assert (f"repo_build: {host.name} checked out file:///srv/git/volt-x.git main at commit {found}, but the controller "
            f"resolved it to {expected}: the branch moved meanwhile (run again) or the host is not to be trusted") in " ".join(proc.stdout.split())
    assert not (tmp_path / "cache").exists()


def test_cargo_builds_with_the_repositorys_lock_file(make_host, origin):
    """Cargo.lock is in the repository: cargo uses it as it is (--locked) and fails rather than resolve anew."""
    origin.push("crates/volt-learn/Cargo.toml", 'version = "0.1.0"', 'version = "0.1.1"')  # Cargo.lock not updated
    host = make_host("dev", volumes=[origin.volume])
    proc = host.playbook(play(origin.vars(), serve=False))
    assert proc.returncode != 0 and "cargo build failed (rc=101)" in proc.stdout
    assert "--locked" in proc.stdout and "Cargo.lock" in proc.stdout, proc.stdout[-3000:]


def test_restore_streams_an_entry_into_any_dest_and_a_failure_is_one_line(make_host, tmp_path):
    """The restore (`python -m volt_ansible.buildcache restore`, what repo_build runs on a cache hit): the archive lands
    unpacked in a dest whose name a shell would expand, taken literally, its build stamp last; a stream cut short changes
    nothing there; a dest it cannot make is one line naming it."""
    work = tmp_path / "target" / "release"
    (work / ".volt-help").mkdir(parents=True)
    (work / "train-vfn").write_text("#!/bin/sh\necho ok\n")
    (work / "train-vfn").chmod(0o755)
    (work / ".volt-build-stamp").write_text("new-key\n")
    (work / ".volt-help" / "train-vfn.txt").write_text("x" * 300_000)  # after the stamp in the archive, as cache_save packs
    archive = tmp_path / "entry.tar.gz"
    subprocess.run(["tar", "-czf", archive, "-C", tmp_path, "target/release/train-vfn", "target/release/.volt-build-stamp",
                    "target/release/.volt-help/train-vfn.txt"], check=True)
    host = make_host("host")
    conn = {"host": "127.0.0.1", "port": host.port, "user": "root", "key": str(host.key),
            "args": ["-o UserKnownHostsFile=/dev/null -o StrictHostKeyChecking=no"]}  # test scaffolding: a fresh test host
    dest = "/root/a dir/$(touch /tmp/pwned)'x"
    stamp = "target/release/.volt-build-stamp"
    run = [sys.executable, "-m", "volt_ansible.buildcache", "restore", str(archive), dest, stamp, json.dumps(conn)]
    assert subprocess.run(run, capture_output=True, text=True).returncode == 0
    assert host.exec(f"{shlex.quote(dest + '/target/release/train-vfn')}").stdout.strip() == "ok"
    assert host.exec("test -e /tmp/pwned", check=False).returncode != 0
    assert host.read(dest + "/target/release/.volt-build-stamp") == "new-key\n"
    assert host.exec(f"ls -A {shlex.quote(dest)}").stdout.split() == ["target"]  # no temporary directory left

    # cut off before the end (the help file, after the stamp): the older build stays as it was, stamp and all
    host.exec("mkdir -p /root/old/target/release && echo old-key > /root/old/target/release/.volt-build-stamp")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    cut_short = subprocess.run([*run[:4], str(cut), "/root/old", stamp, json.dumps(conn)], capture_output=True, text=True)
    lines = cut_short.stderr.strip().splitlines()  # the stream ends after the stamp, inside the help file
    assert cut_short.returncode == 1 and len(lines) == 1, cut_short.stderr
    assert lines[0].startswith("repo_build: restoring cut.tar.gz into /root/old on 127.0.0.1 failed (rc=2): tar: "), lines
    assert host.read("/root/old/target/release/.volt-build-stamp") == "old-key\n"
    assert host.exec("ls -A /root/old").stdout.split() == ["target"]

    bad = subprocess.run([*run[:-3], "/etc/hostname/volt-x", stamp, json.dumps(conn)], capture_output=True, text=True)
    lines = bad.stderr.strip().splitlines()
    assert bad.returncode == 1 and len(lines) == 1, bad.stderr
    assert lines[0].startswith("repo_build: restoring entry.tar.gz into /etc/hostname/volt-x on 127.0.0.1 failed (rc=")
