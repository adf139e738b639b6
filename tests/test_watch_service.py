"""`watch --install`: the systemd user unit (checked by systemd's own parser, its paths resolved), the cron /
Task Scheduler line where no systemd runs (run for real), no secret in either; one watch at a time and `status`
saying whether one runs and when its last round was."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from volt_ansible import autostart, watchbeat

ODD = "we ird %dir"  # a space and a systemd specifier in every path: quoting mistakes show


def target(tmp_path: Path) -> autostart.Target:
    root = tmp_path / ODD / "project"
    root.mkdir(parents=True)
    py = tmp_path / ODD / "bin" / "python"
    py.parent.mkdir()
    py.symlink_to(sys.executable)
    return autostart.Target("volt-x-phase21", root, str(py), {"PATH": os.environ["PATH"], "VOLT_BACKEND": "local"})


def test_the_unit_passes_systemds_own_check_and_names_the_real_interpreter(tmp_path):
    t = target(tmp_path)
    unit = tmp_path / f"{t.name}.service"
    unit.write_text(autostart.unit_text(t))
    runtime = tmp_path / "run"
    runtime.mkdir(mode=0o700)
    ok = subprocess.run(["systemd-analyze", "verify", "--user", str(unit)], capture_output=True, text=True,
                        env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert ok.returncode == 0 and ok.stderr == "", ok.stderr
    # verify resolves ExecStart's program: a path mangled by the quoting is refused
    broken = tmp_path / "broken.service"
    broken.write_text(autostart.unit_text(autostart.Target(t.campaign, t.root, t.python + "-missing", t.env)))
    bad = subprocess.run(["systemd-analyze", "verify", "--user", str(broken)], capture_output=True, text=True,
                         env={**os.environ, "XDG_RUNTIME_DIR": str(runtime)})
    assert bad.returncode != 0 and "python-missing" in bad.stderr, bad.stderr
    text = unit.read_text()
    assert "Restart=on-failure" in text and "WantedBy=default.target" in text and "%%dir" in text and "%dir" not in text.replace("%%", "")


def test_no_secret_reaches_the_unit_or_the_lines():
    env = autostart.passed_env({"PATH": "/usr/bin", "VOLT_BACKEND": "vast", "VAST_API_KEY": "sk-live-1", "VOLT_VAST_TOKEN": "t0k",
                                "VOLT_DIR": "/x/.volt", "HOME": "/root", "AWS_SECRET_ACCESS_KEY": "a"})
    assert env == {"PATH": "/usr/bin", "VOLT_BACKEND": "vast", "VOLT_DIR": "/x/.volt"}


def test_without_systemd_the_printed_line_runs_the_watch_for_real(project):
    """This machine runs no systemd user manager (a container): --install writes nothing and prints the cron line;
    the line itself, run by sh, starts `volt-ansible watch` in the project (no instance: it ends at once, exit 0, and
    the loop ends with it)."""
    out = project.cli("watch", "--install", XDG_CONFIG_HOME=str(project.home / "cfg")).stdout
    assert "no systemd user manager here" in out and "@reboot cd " in out, out
    assert not (project.home / "cfg" / "systemd").exists()
    line = next(ln for ln in out.splitlines() if ln.startswith("nohup sh -c "))
    foreground = line.removeprefix("nohup ").removesuffix(" >/dev/null 2>&1 &")
    run = project.sh(foreground, timeout=120)
    assert run.returncode == 0
    log = (project.root / ".volt" / "watch.log").read_text()
    assert "no instance is rented: nothing to watch" in log, log
    assert "last round" in project.cli("status").stdout


def test_with_systemd_install_writes_enables_and_uninstall_removes(project, tmp_path):
    """A systemd user manager stood in for by a recording systemctl (none runs here): the unit lands in the user's
    systemd dir, mode 0600, no secret in it; enable --now after a daemon-reload; uninstall disables and removes it."""
    bin_dir = tmp_path / "fakebin"
    bin_dir.mkdir()
    calls = tmp_path / "calls"
    for tool in ("systemctl", "loginctl"):
        (bin_dir / tool).write_text(f"#!/bin/sh\necho {tool} \"$@\" >> {calls}\necho no\n")
        (bin_dir / tool).chmod(0o755)
    env = {"PATH": f"{bin_dir}:{os.environ['PATH']}", "XDG_CONFIG_HOME": str(tmp_path / "cfg"), "USER": "volt",
           "VAST_API_KEY": "sk-live-secret", "VOLT_LOCAL_RTT_MS": "0"}
    out = project.cli("watch", "--install", **env).stdout
    units = list((tmp_path / "cfg" / "systemd" / "user").glob("volt-ansible-watch-volt-x-phase21-*.service"))
    assert len(units) == 1 and f"installed and started {units[0].name}" in out, out
    assert "loginctl enable-linger" in out  # the recording loginctl says Linger=no
    assert stat.S_IMODE(units[0].stat().st_mode) == 0o600
    text = units[0].read_text()
    assert "sk-live-secret" not in text and "VAST_API_KEY" not in text
    assert f"WorkingDirectory={project.root}" in text and re.search(r'^ExecStart="[^"]+python[^"]*" -m volt_ansible watch$', text, re.M)
    assert calls.read_text().splitlines()[:3] == ["systemctl --user show-environment", "systemctl --user daemon-reload",
                                                  f"systemctl --user enable --now {units[0].name}"]
    assert f"(service {units[0].stem} installed)" in project.cli("status", **env).stdout
    gone = project.cli("watch", "--uninstall", **env).stdout
    assert f"stopped, disabled and removed {units[0].name}" in gone and not units[0].exists()
    assert f"systemctl --user disable --now {units[0].name}" in calls.read_text()


def test_the_vast_backend_needs_the_sdk_key_file_not_the_shells_key(project):
    proc = project.cli("watch", "--install", check=False, VOLT_BACKEND="vast", VAST_API_KEY="sk-live-secret")
    assert proc.returncode == 1 and "save it once with `vastai set api-key <key>`" in proc.stderr, proc.stderr


def test_one_watch_at_a_time_and_status_says_which(project, monkeypatch):
    volt_dir = project.root / ".volt"
    monkeypatch.chdir(project.root)
    with watchbeat.hold(volt_dir):
        watchbeat.beat(volt_dir, ["a round"])
        said = project.cli("status").stdout
        assert re.search(rf"watch: running \(pid {os.getpid()}\), last round \S+ \S+ \(\d+ s ago\)", said), said
        second = project.cli("watch", "--once", check=False)
        assert second.returncode == 1 and f"a watch is already running for this campaign (pid {os.getpid()})" in second.stderr
    after = project.cli("status").stdout
    assert "watch: not running (last round" in after and "watch --install" in after, after


@pytest.mark.parametrize("arg", ["a\nb", "x\rb"])
def test_a_line_break_in_a_path_is_refused(arg, tmp_path):
    from volt_ansible.errors import VoltError

    with pytest.raises(VoltError, match="line break"):
        autostart.unit_text(autostart.Target("c", tmp_path, arg, {}))
