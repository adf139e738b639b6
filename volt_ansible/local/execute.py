"""`vastai execute` in the local double (PUT /api/v0/instances/command/{id}/): a limited command (ls, du and their
usual options) run on the host against the instance's filesystem, so it works on a stopped instance too. The command is
parsed into argv (never a shell); every path is instance data, mapped under the container's mounted root (local/paths.py).
The answer carries a result_url the client polls with a plain GET, and writeable_path: the host prefix that appears in
the output, which the CLI strips (vastai/cli/commands/misc.py execute)."""

from __future__ import annotations

import re
import secrets
import shlex
import subprocess
from pathlib import Path

from volt_ansible.errors import VoltError
from volt_ansible.local import paths

SHORT = {"ls": set("aAlhRrtSdiFo1gnsU"), "du": set("sahcbkmxSl")}
LONG = {
    "ls": {"--all", "--almost-all", "--human-readable", "--recursive", "--reverse", "--size", "--full-time", "--directory"},
    "du": {"--summarize", "--human-readable", "--all", "--total", "--bytes", "--apparent-size", "--one-file-system"},
}
TOKEN = re.compile(r"[A-Za-z0-9_-]{32}")


def parse(command: object) -> tuple[list[str], list[str]]:
    """(program and options, instance paths) of an allowed command; VoltError names what is refused."""
    if not isinstance(command, str) or not command.strip():
        raise VoltError("no command given")
    try:
        words = shlex.split(command)
    except ValueError as e:
        raise VoltError(f"cannot parse the command: {e}") from None
    prog, rest = words[0], words[1:]
    if prog not in SHORT:
        raise VoltError(f"command {prog!r} is not available: use ls or du")
    opts, found, i, ended = [prog], [], 0, False
    while i < len(rest):
        w = rest[i]
        if ended or not w.startswith("-") or w == "-":
            found.append(w)
        elif w == "--":
            ended = True
        elif prog == "du" and (m := re.fullmatch(r"(?:-d|--max-depth=)(\d+)", w)):
            opts.append(f"--max-depth={m.group(1)}")
        elif prog == "du" and w == "-d" and i + 1 < len(rest) and rest[i + 1].isdigit():
            opts.append(f"--max-depth={rest[i + 1]}")
            i += 1
        elif (w in LONG[prog]) if w.startswith("--") else set(w[1:]) <= SHORT[prog]:
            opts.append(w)
        else:
            raise VoltError(f"option {w!r} of {prog} is not available")
        i += 1
    return opts, found


def run(root: Path, opts: list[str], found: list[str]) -> str:
    """The command's output (stdout, then stderr) against the mounted filesystem at root."""
    argv = [*opts, "--", *[paths.on_host(root, p) for p in found]] if found else opts
    proc = subprocess.run(argv, cwd=root, capture_output=True, text=True, errors="replace", timeout=120)
    return proc.stdout + proc.stderr


def new_token() -> str:
    return secrets.token_hex(16)  # 32 hex characters: an unguessable result URL


def write_result(results: Path, token: str, text: str) -> None:
    results.mkdir(mode=0o700, exist_ok=True)
    tmp = results / f".{token}.tmp"
    tmp.write_text(text)
    tmp.rename(results / token)  # complete or absent: the poller gets 200 only for the whole result


def read_result(results: Path, token: str) -> str | None:
    if not TOKEN.fullmatch(token):
        return None
    p = results / token
    return p.read_text() if p.exists() else None


def parse_or_error(command: object) -> tuple[list[str], list[str]] | str:
    try:
        return parse(command)
    except VoltError as e:
        return str(e)
