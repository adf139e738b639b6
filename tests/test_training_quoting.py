"""Values of the job tables reach the instance's shell verbatim: as argv, env and paths, never as shell code.

Titles, outputs, inputs, log paths and training_tmux_env values holding $(...), backticks, quotes, spaces, $5 and a
leading dash: the binaries get exactly those strings, logs and outputs land at exactly those paths, titles appear
verbatim in the chain's log, and none of the embedded `touch` commands runs. The scripts are rendered with the
role's own templates and filters; the binaries are stand-ins that record their argv (no Volt-X build).
"""

from __future__ import annotations

import copy
import importlib.util
import json
import posixpath
import shlex
import subprocess
import time
from pathlib import Path

import jinja2
import pytest
import yaml
from conftest import REPO

ROLE = REPO / "roles/training_tmux"
_spec = importlib.util.spec_from_file_location("training_tmux_filters_q", ROLE / "filter_plugins/training_tmux.py")
F = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(F)

GV = yaml.safe_load((REPO / "group_vars/all.yml").read_text())
DEFAULTS = yaml.safe_load((ROLE / "defaults/main.yml").read_text())
KNOBS = ("dest", "bin_dir", "status_dir", "script_dir", "ready_dir", "ready_suffix", "chain_name", "epoch_owner_file",
         "epoch_archive", "session")
GPU = {"name": "NVIDIA GeForce RTX 5090", "count": 1}

# Records its argv and $VOLT_Q, prints a line (into the job's log), writes its --output: a stand-in for both binaries.
STUB = """#!/usr/bin/env python3
import json, os, sys
out = sys.argv[sys.argv.index("--output") + 1]
os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
open(out, "w").close()
with open(os.environ["VOLT_Q_RECORD"], "a") as f:
    f.write(json.dumps({"bin": os.path.basename(sys.argv[0]), "argv": sys.argv[1:], "env": os.environ.get("VOLT_Q")}) + "\\n")
print("stub: wrote", out)
"""


def nasty(tag: str, pwn: str) -> str:
    """A string with everything a shell would act on; running it as code creates <pwn>-<tag>."""
    return f"-{tag} $(touch {pwn}-{tag}) `touch {pwn}-{tag}2` it's \"q\" $5 ${{HOME}} a  b;|&<>*"


def tables(pwn: str) -> tuple[dict, dict, dict]:
    """volt_phase03 and a two-stage volt_curriculum of group_vars with hostile titles, paths and values, + the env."""
    p03 = copy.deepcopy(GV["volt_phase03"])
    p03.update(title=nasty("t0", pwn), log=f"logs/-p03 {nasty('l0', pwn)}.log")
    p03["args"].update({"--corpus": f"data/{nasty('i0', pwn)}.jsonl", "--output": f"checkpoints/{nasty('o0', pwn)}.bin",
                        "--k": nasty("a0", pwn)})
    cur = copy.deepcopy(GV["volt_curriculum"])
    cur["stages"] = cur["stages"][:2]
    for i, st in enumerate(cur["stages"], 1):
        st.update(title=nasty(f"t{i}", pwn), log=f"-logs/{nasty(f'l{i}', pwn)}.log")
        st["args"].update({"--output": f"-ckpt/{nasty(f'o{i}', pwn)}.safetensors", "--lr": nasty(f"a{i}", pwn)})
    cur["stages"][1]["args"]["--data"] = [f"data/{nasty('i2', pwn)}.jsonl"]
    return p03, cur, {"VOLT_Q": nasty("env", pwn), "VOLT_FIXTURE_EPOCH_MS": 1}


def pwned(pwn: str) -> list[str]:
    """Every file a `touch` in tables(pwn) would create."""
    tags = ["t0", "l0", "i0", "o0", "a0", "t1", "l1", "o1", "a1", "t2", "l2", "o2", "a2", "i2", "env"]
    return [f"{pwn}-{t}{n}" for t in tags for n in ("", "2")]


def plan(p03: dict, cur: dict, env: dict, dest: str) -> tuple[dict, dict]:
    knobs = {k: DEFAULTS[f"training_tmux_{k}"] for k in KNOBS} | {"dest": dest}
    return F.training_tmux_plan(p03, cur, knobs, env), knobs


def render(p: dict, knobs: dict, env: dict) -> dict[str, str]:
    """path -> text of every script the role writes, rendered from its templates as Ansible does (trim_blocks)."""
    jenv = jinja2.Environment(loader=jinja2.FileSystemLoader(ROLE / "templates"), trim_blocks=True, undefined=jinja2.StrictUndefined)
    jenv.filters["quote"] = lambda s: shlex.quote(str(s))
    tvars = {**DEFAULTS, **{f"training_tmux_{k}": v for k, v in knobs.items()}, "training_tmux_env": env,
             "ansible_managed": "test", "__training_tmux_plan": p}
    out = {job["script_path"]: jenv.get_template("job.sh.j2").render(tvars, job=job) for job in [p["phase03"], *p["stages"]]}
    out[p["chain"]["script_path"]] = jenv.get_template("chain.sh.j2").render(tvars)
    out[p["launcher"]] = jenv.get_template("launch.sh.j2").render(tvars)
    return out


def read_status(text: str) -> dict:
    """As volt_ansible.jobs and the role's probe read a status file: key=value lines, the last one wins."""
    return dict(line.split("=", 1) for line in text.splitlines() if "=" in line)


def expected_runs(p: dict, env: dict) -> list[dict]:
    return [{"bin": posixpath.basename(j["bin"]), "argv": j["argv"][1:], "env": env["VOLT_Q"]} for j in [p["phase03"], *p["stages"]]]


def inputs_of(p: dict) -> list[str]:
    return sorted({x for j in [p["phase03"], *p["stages"]] for x in [j["bin"], *j["inputs"], j["ready"]]})


# --- no host -------------------------------------------------------------------------------------


def test_plan_refuses_env_names_and_multiline_values_with_one_line():
    p03, cur, env = tables("/tmp/x")
    for key in ("BAD;touch /tmp/x;Y", "1ST", "A-B", "A B", "", "X\n"):
        with pytest.raises(F.AnsibleFilterError) as err:
            plan(p03, cur, {**env, key: "v"}, "/root/volt-x")
        assert str(err.value) == (f"training_tmux: training_tmux_env key {key!r} is not a valid environment variable name "
                                  "([A-Za-z_][A-Za-z0-9_]*): rename it")
    bad = copy.deepcopy(cur)
    bad["stages"][0]["title"] = "ok\nstate=done"
    with pytest.raises(F.AnsibleFilterError, match=r"^training_tmux: volt_curriculum.stages\[0\].title must be one line "
                                                   r"\(no newline or control character\), got 'ok\\nstate=done'$"):
        plan(p03, bad, env, "/root/volt-x")
    bad = copy.deepcopy(p03)
    bad["args"]["--output"] = "a\rb"
    with pytest.raises(F.AnsibleFilterError, match=r"volt_phase03: the output \(--output\) must be one line"):
        plan(bad, cur, env, "/root/volt-x")
    with pytest.raises(F.AnsibleFilterError, match="training_tmux_session must be a plain name"):
        F.training_tmux_plan(p03, cur, {k: DEFAULTS[f"training_tmux_{k}"] for k in KNOBS} | {"session": "a b"}, env)


def test_rendered_scripts_pass_hostile_values_verbatim(tmp_path):
    """The rendered chain + job scripts, run here in a sandbox (a dest with a space and a $) with a stub binary."""
    pwn = str(tmp_path / "pwned")
    p03, cur, env = tables(pwn)
    dest = tmp_path / "volt x$HOME"
    p, knobs = plan(p03, cur, env, str(dest))
    scripts = render(p, knobs, env)
    for path, text in scripts.items():
        assert subprocess.run(["bash", "-n"], input=text, text=True).returncode == 0, path
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Path(path).write_text(text)
    for rel in inputs_of(p):
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        (dest / rel).write_text(STUB)
        (dest / rel).chmod(0o755)
    record = tmp_path / "argv.jsonl"
    run_env = {"PATH": "/usr/bin:/bin", "VOLT_Q_RECORD": str(record)}

    subprocess.run(["bash", p["phase03"]["script_path"]], env=run_env, timeout=60, check=True, capture_output=True)
    chain = subprocess.run(["bash", p["chain"]["script_path"]], env=run_env, timeout=60, capture_output=True, text=True)
    assert chain.returncode == 0, chain.stdout + chain.stderr

    runs = [json.loads(line) for line in record.read_text().splitlines()]
    assert runs == expected_runs(p, env)
    assert [x for x in pwned(pwn) if Path(x).exists()] == []
    chain_log = (dest / p["chain"]["log"]).read_text()
    for job in p["stages"]:
        assert f"=== STAGE {job['index']}: {job['title']} ===\n" in chain_log
    for job in [p["phase03"], *p["stages"]]:
        assert f"stub: wrote {job['output']}\n" in (dest / job["log"]).read_text()
        assert (dest / job["output"]).is_file()
        st = read_status((dest / job["status"]).read_text())
        assert (st["state"], st["output"], st["log"]) == ("done", job["output"], job["log"]), st

    # Done stages are skipped by name, with their exact output in the message.
    again = subprocess.run(["bash", p["chain"]["script_path"]], env=run_env, timeout=60, capture_output=True, text=True)
    assert f"{p['stages'][0]['name']} already done ({p['stages'][0]['output']} exists): skipped\n" in again.stdout


def test_a_newline_in_a_status_value_adds_no_key(tmp_path):
    """The epoch owner file is read back into the failure reason: its newline must not write a second state= line."""
    p, knobs = plan(GV["volt_phase03"], GV["volt_curriculum"], {}, str(tmp_path))
    job = p["stages"][0]
    script = Path(job["script_path"])
    script.parent.mkdir(parents=True)
    script.write_text(render(p, knobs, {})[job["script_path"]])
    (tmp_path / job["epoch"]["dir"]).mkdir()
    (tmp_path / job["epoch"]["owner"]).write_text("stage9\nstate=done\nexit_code=0\n")
    (tmp_path / job["epoch"]["glob"].replace("*", "3")).write_text("")
    proc = subprocess.run(["bash", str(script)], env={"PATH": "/usr/bin:/bin"}, timeout=30, capture_output=True, text=True)
    assert proc.returncode == 1
    lines = (tmp_path / job["status"]).read_text().splitlines()
    assert [ln for ln in lines if ln.startswith(("state=", "exit_code="))] == ["state=failed", "exit_code=1"], lines
    assert read_status("\n".join(lines))["reason"].endswith("belong to stage9 state=done exit_code=0 (checkpoints/.volt-epochs), not stage1")


# --- on a podman test host, through playbooks/train.yml -------------------------------------------


@pytest.mark.podman
def test_hostile_job_tables_run_verbatim_on_a_host(make_host):
    from testhost import TestHost

    host: TestHost = make_host()
    dest, pwn = "/root/volt-x", "/tmp/volt-pwned"
    p03, cur, env = tables(pwn)
    p, _ = plan(p03, cur, env, dest)
    files = {f"{dest}/{rel}": STUB for rel in inputs_of(p)}
    host.put(json.dumps(files), "/tmp/files.json", mode="0600")
    host.exec("python3 -c 'import json, os\nfor p, t in json.load(open(\"/tmp/files.json\")).items():\n"
              "    os.makedirs(os.path.dirname(p), exist_ok=True); open(p, \"w\").write(t); os.chmod(p, 0o755)'")

    def train(**ev):
        return host.playbook(REPO / "playbooks/train.yml", {"cuda_check_gpu": GPU, "stage": "all", "volt_phase03": p03,
                                                            "volt_curriculum": cur, "training_tmux_env": env, **ev}, timeout=300)

    # A bad variable name stops the run on the controller, in one line, before anything reaches the host.
    bad = train(training_tmux_env={**env, "X;touch /tmp/volt-pwned-key;Y": 1})
    assert bad.returncode != 0
    assert ("training_tmux: training_tmux_env key 'X;touch /tmp/volt-pwned-key;Y' is not a valid environment variable name "
            "([A-Za-z_][A-Za-z0-9_]*): rename it") in bad.stdout, bad.stdout[-3000:]
    assert "Look at the instance" not in bad.stdout
    assert host.exec(f"test -e {dest}/.volt-train || test -e {dest}/logs || test -e /tmp/volt-pwned-key", check=False).returncode == 1

    ok = train(training_tmux_env={**env, "VOLT_Q_RECORD": "/root/argv.jsonl"})
    assert ok.returncode == 0, ok.stdout[-5000:] + ok.stderr[-2000:]
    deadline = time.monotonic() + 60
    while True:
        chain, p03_st = (read_status(host.read(f"{dest}/{s}"))
                         for s in (p["chain"]["status"], p["phase03"]["status"]))
        if chain.get("state") in ("done", "failed") and p03_st.get("state") in ("done", "failed"):
            break
        assert time.monotonic() < deadline, (chain, p03_st, host.read(f"{dest}/{p['chain']['log']}"))
        time.sleep(0.3)
    assert (chain["state"], p03_st["state"]) == ("done", "done"), (chain, p03_st)

    runs = sorted((json.loads(ln) for ln in host.exec("cat /root/argv.jsonl").stdout.splitlines()), key=lambda r: r["bin"])
    assert runs == sorted(expected_runs(p, env), key=lambda r: r["bin"])
    assert host.exec("ls -d /tmp/volt-pwned* 2>/dev/null", check=False).stdout == ""
    read = ("import json, sys\nd = sys.argv[1]\n"
            "print(json.dumps({p: open(d + '/' + p, errors='replace').read() for p in sys.argv[2:]}))")
    jobs = [p["phase03"], *p["stages"]]
    texts = json.loads(host.exec(shlex.join(["python3", "-c", read, dest, p["chain"]["log"],
                                             *[j["log"] for j in jobs], *[j["status"] for j in jobs]])).stdout)
    for job in p["stages"]:
        assert f"=== STAGE {job['index']}: {job['title']} ===\n" in texts[p["chain"]["log"]]
    for job in jobs:
        assert f"stub: wrote {job['output']}\n" in texts[job["log"]]
        assert read_status(texts[job["status"]])["output"] == job["output"]
    windows = host.exec("tmux list-windows -t =training -F '#{window_name}'").stdout.split()
    assert windows == ["phase21", "phase03"]  # the GPU's chain launched first
