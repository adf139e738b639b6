"""`watch --install`: a watch that outlives its terminal, a reboot and a crash. Where a systemd user manager runs, a
user unit (restarted on failure, started at boot); elsewhere (WSL without systemd, macOS, Linux without systemd) the
exact line for Task Scheduler or cron. No secret goes into any of them: the Vast key stays in the SDK's key file."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from volt_ansible.backends.vast import SECRET_ENV
from volt_ansible.errors import VoltError
from volt_ansible.fileops import atomic_write

RESTART_S = 30
# What the watch needs from the environment it was installed from; never a secret (SECRET_ENV, or a name that says so).
_PASSED = re.compile(r"^(PATH|CONTAINERS_CONF|VOLT_[A-Z0-9_]+)$")
_SECRETISH = re.compile(r"KEY|TOKEN|SECRET|PASS", re.IGNORECASE)


@dataclass
class Target:
    """One campaign's watch, as a service: where it runs, with which Python, in which environment."""

    campaign: str
    root: Path
    python: str
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None  # where the cron / Task Scheduler loop appends the watch's output (default <root>/.volt/watch.log)

    @property
    def name(self) -> str:
        # two checkouts of the same campaign get two services, each watching its own state
        return f"volt-ansible-watch-{self.campaign}-{hashlib.sha256(str(self.root).encode()).hexdigest()[:8]}"


def passed_env(environ: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in sorted(environ.items()) if _PASSED.match(k) and not SECRET_ENV.match(k) and not _SECRETISH.search(k)}


def _unit_quote(arg: str) -> str:
    """One word for a unit file's ExecStart=/Environment=: C-style double quotes, specifiers (%) and $ escaped."""
    if any(c in arg for c in "\n\r\0"):
        raise VoltError(f"{arg!r} holds a line break: a systemd unit cannot carry it; move the project to a plain path")
    inner = arg.replace("\\", "\\\\").replace('"', '\\"').replace("%", "%%").replace("$", "$$")
    return f'"{inner}"'


def unit_text(t: Target) -> str:
    env = " ".join(_unit_quote(f"{k}={v}") for k, v in t.env.items())
    return "\n".join([
        "# Written by `volt-ansible watch --install`; `volt-ansible watch --uninstall` removes it.",
        "[Unit]",
        f"Description=volt-ansible watch, campaign {t.campaign} ({t.root})".replace("%", "%%"),
        "StartLimitIntervalSec=0",
        "",
        "[Service]",
        "Type=simple",
        f"WorkingDirectory={t.root}".replace("%", "%%"),
        *([f"Environment={env}"] if env else []),
        f"ExecStart={_unit_quote(t.python)} -m volt_ansible watch",
        # watch exits 0 when the campaign is finished or stopped: then it stays stopped
        "Restart=on-failure",
        f"RestartSec={RESTART_S}",
        "UMask=0077",
        "",
        "[Install]",
        "WantedBy=default.target",
        "",
    ])


def loop_command(t: Target) -> str:
    """The shell line that runs the watch again after a failure, as the unit does (for cron and Task Scheduler)."""
    env = " ".join(shlex.quote(f"{k}={v}") for k, v in t.env.items())
    run = f"env {env} {shlex.quote(t.python)}" if env else shlex.quote(t.python)
    log = t.log or t.root / ".volt" / "watch.log"
    return (f"cd {shlex.quote(str(t.root))} && mkdir -p {shlex.quote(str(log.parent))} && "
            f"until {run} -m volt_ansible watch >>{shlex.quote(str(log))} 2>&1; do sleep {RESTART_S}; done")


def unit_dir() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "systemd" / "user"


def unit_path(t: Target) -> Path:
    return unit_dir() / f"{t.name}.service"


def _systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    try:
        proc = subprocess.run(["systemctl", "--user", *args], capture_output=True, text=True, timeout=60)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise VoltError(f"systemctl --user {' '.join(args)} failed: {e}") from None
    if check and proc.returncode != 0:
        why = (proc.stderr or proc.stdout).strip().splitlines()
        raise VoltError(f"systemctl --user {' '.join(args)} failed: {why[-1] if why else f'exit {proc.returncode}'}")
    return proc


def systemd_user_manager() -> bool:
    """Whether a systemd user manager answers (not under WSL without systemd, macOS, or a container without it)."""
    try:
        return subprocess.run(["systemctl", "--user", "show-environment"], capture_output=True, timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


def is_wsl() -> bool:
    try:
        return "microsoft" in Path("/proc/sys/kernel/osrelease").read_text().lower()
    except OSError:
        return False


def manual_lines(t: Target) -> list[str]:
    """Where no systemd user manager runs: the exact lines that do what the unit would."""
    loop = loop_command(t)
    if is_wsl():
        distro = os.environ.get("WSL_DISTRO_NAME") or "<your distro>"
        tr = f"wsl.exe -d {distro} -- sh -c {shlex.quote(loop)}".replace('"', '\\"')
        return ["this WSL runs no systemd (turn it on with [boot] systemd=true in /etc/wsl.conf, `wsl --shutdown`, then "
                "--install again), or register the watch with Windows Task Scheduler (in a Windows terminal):",
                f'schtasks /Create /TN "{t.name}" /SC ONLOGON /RL LIMITED /TR "{tr}"',
                "and start it now in this terminal:", f"nohup sh -c {shlex.quote(loop)} >/dev/null 2>&1 &"]
    return ["no systemd user manager here: add this line with `crontab -e` (it starts the watch at boot and again after "
            "a failure):", "@reboot " + loop.replace("%", "\\%"),
            "and start it now:", f"nohup sh -c {shlex.quote(loop)} >/dev/null 2>&1 &"]


def install(t: Target) -> list[str]:
    """Write and enable the unit (or say what to do instead); the lines to print."""
    if not systemd_user_manager():
        return manual_lines(t)
    path = unit_path(t)
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, unit_text(t), mode=0o600)
    _systemctl("daemon-reload")
    _systemctl("enable", "--now", path.name)
    lines = [f"installed and started {path.name} ({path}): restarted {RESTART_S} s after a failure, started with your "
             "user session; `journalctl --user -u " + path.name + "` shows its rounds"]
    user = os.environ.get("USER") or ""
    linger = subprocess.run(["loginctl", "show-user", user, "-p", "Linger", "--value"], capture_output=True, text=True) if user else None
    if linger is None or linger.returncode != 0 or linger.stdout.strip() != "yes":
        lines.append("it starts at boot only once you log in: `loginctl enable-linger` makes it start at boot without a login")
    return lines


def uninstall(t: Target) -> list[str]:
    path = unit_path(t)
    if not systemd_user_manager():
        gone = ""
        if path.exists():
            path.unlink()
            gone = f"removed {path}; "
        return [f"{gone}no systemd user manager here: remove the watch's line from `crontab -e` or Task Scheduler "
                f"({t.name}) by hand, and stop a running one with `pkill -f 'volt_ansible watch'`"]
    if not path.exists():
        return [f"no watch service installed for this campaign ({path.name} is not in {path.parent})"]
    _systemctl("disable", "--now", path.name, check=False)
    path.unlink()
    _systemctl("daemon-reload")
    return [f"stopped, disabled and removed {path.name}"]


def installed(t: Target) -> bool:
    return unit_path(t).exists()
