"""volt-ansible: parse, call campaign, print (volt_ansible.present). Every VoltError becomes one red line and exit 1."""

from __future__ import annotations

import os
import sys
import time
from contextlib import suppress

import click
import typer
import yaml
from rich.markup import escape

from volt_ansible import campaign, present
from volt_ansible.errors import VoltError
from volt_ansible.present import err, out

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Rent a Vast.ai GPU and run a Volt-X training campaign on it.")
local_app = typer.Typer(no_args_is_help=True, help="The embedded local backend: Vast API double + podman instances.")
app.add_typer(local_app, name="local")
cache_app = typer.Typer(no_args_is_help=True, help="The controller's build cache (roles/repo_build, repo_build_cache).")
app.add_typer(cache_app, name="cache")

BackendOpt = typer.Option("local", "--backend", "-b", help="vast (Vast.ai) or local (embedded test world)", envvar="VOLT_BACKEND")


@app.command()
def offers(backend: str = BackendOpt, limit: int = typer.Option(10, "--limit", "-n", min=1)) -> None:
    """List offers matching group_vars/all.yml, cheapest first, then more CPU cores, then reliability."""
    found = campaign.offers(campaign.backend_name(backend), limit)
    out.print(present.offer_table(found))


@app.command()
def check(job: list[str] = typer.Option([], "--job", "-j", help="check only the data these jobs need (phase03, stage1, ...)")) -> None:
    """Pre-flight, before renting: every data source exists and is readable; sizes and digests (cached) recorded."""
    with present.spinner("hashing data sources") as progress:
        report = campaign.check(job, progress)
    for line in report.lines():
        out.print(line, soft_wrap=True, highlight=False)


@app.command()
def provision(
    backend: str = BackendOpt,
    offer: int | None = typer.Option(None, "--offer", help="rent this offer ID instead of the best match"),
    plan: bool = typer.Option(False, "--plan", help="print what would be rented and its cost; rent nothing"),
) -> None:
    """Rent the best matching instance, wait until SSH works, record it in .volt/state.json."""
    backend = campaign.backend_name(backend)
    if plan:
        p = campaign.plan(backend, offer)
        out.print(present.offer_table([p.offer]))
        out.print(f"Would rent offer {p.offer['id']} at ${p.dph:.3f}/h = ${p.per_day:.2f}/day (nothing rented: --plan)")
        if p.pricing:
            out.print(p.pricing, soft_wrap=True, highlight=False)
        return
    with present.spinner("provisioning") as progress:
        inst = campaign.provision(backend, offer, progress)
    out.print(f"[green]instance {inst.id} running[/] ({inst.gpu_name}, ${inst.dph_total:.3f}/h)")
    out.print("ssh: " + " ".join(campaign.ssh_command([])), soft_wrap=True, highlight=False)


@app.command()
def status(jobs_too: bool = typer.Option(True, "--jobs/--no-jobs", help="also read the training jobs over SSH")) -> None:
    """What this campaign has rented, its live state, its cost so far, and each training job."""
    s = campaign.status()

    def read_jobs() -> tuple[str, list[str]]:
        snap = campaign.job_snapshot()
        return campaign.projection(snap).line(), campaign.job_lines(snap)

    running = s.state.instance is not None and (s.live or {}).get("actual_status") == "running"
    present.status(s, read_jobs if jobs_too and running else None)


@app.command()
def ssh(command: list[str] = typer.Argument(None, help="a command to run instead of a login shell")) -> None:
    """Open an SSH session on the instance (pinned host key, campaign key)."""
    argv = campaign.ssh_command(command or [])
    os.execvp(argv[0], argv)


@app.command()
def destroy(
    yes: bool = typer.Option(False, "--yes", "-y", help="do not ask"),
    force: bool = typer.Option(False, "--force", help="destroy even though outputs are not home (they are lost)"),
) -> None:
    """Destroy the instance (never just stop it: a stopped Vast instance still bills storage). Refused while outputs are not home."""
    s = campaign.status()
    targets = [i.id for i in [s.state.instance, *s.state.retired] if i is not None]
    if not targets:
        raise VoltError("no instance to destroy: .volt/state.json records none (see `volt-ansible status`)")
    if not yes and not typer.confirm(f"Destroy instance(s) {', '.join(map(str, targets))}? Everything on their disks is deleted"):
        raise typer.Exit(1)
    present.destroyed(campaign.destroy(force=force))


@app.command()
def recover(
    from_scratch: bool = typer.Option(False, "--from-scratch", help="recover even with no backup: training starts from zero"),
    force: bool = typer.Option(False, "--force", help="replace the instance even though it still answers"),
) -> None:
    """After a preemption: rent the same spec, prepare it, push the data and the newest epoch checkpoint home, resume."""
    with present.spinner("recover") as progress:
        r = campaign.recover(from_scratch=from_scratch, force=force, progress=progress)
    out.print(f"[green]instance {r.new.id} replaces {r.lost_id}[/] ({escape(r.reason)}); jobs started again after {r.seconds:.0f} s")
    present.line(r.restore.describe())


@app.command()
def finish() -> None:
    """Once every stage's output and the codebook are home and verified: destroy the instance, print the summary."""
    with present.spinner("finish") as progress:
        f = campaign.finish(progress)
    present.lines(f.lines)


@app.command()
def watch(
    interval: float | None = typer.Option(None, "--interval", "-i", min=0.01, help="minutes between backups (volt_watch.backup_interval_min)"),
    auto_recover: bool | None = typer.Option(None, "--recover/--no-recover", help="replace a lost instance (default volt_watch.auto_recover)"),
    auto_finish: bool | None = typer.Option(None, "--finish/--no-finish", help="finish when the last stage is home (default volt_watch.auto_finish)"),
    once: bool = typer.Option(False, "--once", help="one round, then exit"),
    install: bool = typer.Option(False, "--install", help="keep a watch running: a systemd user unit (restart on failure, at boot), "
                                 "or the line for cron / Task Scheduler where systemd does not run"),
    uninstall: bool = typer.Option(False, "--uninstall", help="stop and remove what --install made"),
) -> None:
    """Back up every N minutes, recover after a preemption, stop at the budget, finish at the end. Safe to stop and restart."""
    if install or uninstall:
        if install and uninstall:
            raise VoltError("--install and --uninstall together: pick one")
        present.lines(campaign.watch_install() if install else campaign.watch_uninstall())
        return
    with present.spinner("watch") as progress:
        for r in campaign.watch(auto_recover, auto_finish, interval, once, progress=progress):
            out.rule(time.strftime("%H:%M:%S"))
            present.lines(r.lines)
            if r.done:
                out.print(f"watch: {escape(r.done)}")


@app.command()
def up(
    backend: str = BackendOpt,
    stage: str = typer.Option("all", "--stage", "-s", help="all (1 -> 2 -> 3), 1, 2, 3 or none"),
    phase03: bool = typer.Option(True, "--phase03/--no-phase03", help="run Phase 0.3 beside it on the CPU"),
    yes: bool = typer.Option(False, "--yes", "-y", help="rent without asking"),
    then_watch: bool = typer.Option(False, "--watch", help="then watch: back up, recover, finish (volt_watch)"),
    plan_only: bool = typer.Option(False, "--plan", help="print the plan (offer, price, bid, data, resume); rent nothing"),
) -> None:
    """The whole campaign in one command: pre-flight, plan, rent, data + build + CUDA check in parallel, each job
    as soon as it can start. Interrupt it at any point and run it again: it continues (no second instance)."""
    backend = campaign.backend_name(backend)
    with present.spinner("pre-flight") as progress:
        p = campaign.up_plan(backend, stage, phase03, progress)
    present.lines(p.lines())
    if plan_only:
        out.print("nothing rented: --plan")
        return
    if p.instance is None and not yes and not typer.confirm("Rent it and start?"):
        raise typer.Exit(1)
    with present.Tracks(campaign.data_track) as tracks:
        result = campaign.up(backend, stage, phase03, progress=tracks.rent, on_task=tracks.task)
    present.run_result("up", result)
    present.lines(campaign.job_lines())
    if then_watch:
        watch(interval=None, auto_recover=None, auto_finish=None, once=False, install=False, uninstall=False)


def _extravars(pairs: list[str]) -> dict:
    extra: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise VoltError(f"-e {pair!r} is not key=value: write it as -e name=value")
        extra[key.strip()] = yaml.safe_load(value) if value else ""
    return extra


@app.command()
def backup() -> None:
    """Pull finished epoch checkpoints, stage outputs, the codebook and logs home, each verified by digest."""
    with present.spinner("backup") as progress:
        result, summary = campaign.backup(on_task=lambda task, n: progress(f"[{n}] {task}"))
    present.run_result("backup", result)
    epoch = summary.get("newest_epoch")
    newest = f"epoch {epoch['epoch']} ({epoch['path']})" if epoch else "none"
    out.print(f"home: {summary.get('files', 0)} file(s), {summary.get('bytes', 0) / 1e6:.1f} MB in {campaign.backup_dir()}; "
              f"newest epoch checkpoint: {newest}; still missing: {', '.join(summary.get('missing') or []) or 'nothing'}",
              soft_wrap=True, highlight=False)


@app.command()
def train(
    stage: str = typer.Option("all", "--stage", "-s", help="1, 2, 3 or all (chains 1 -> 2 -> 3)"),
    phase03: bool = typer.Option(True, "--phase03/--no-phase03", help="run Phase 0.3 beside it on the CPU"),
    force: bool = typer.Option(False, "--force", help="run again jobs that already finished"),
) -> None:
    """Start the training jobs in tmux on the instance (playbooks/train.yml)."""
    with present.spinner("train") as progress:
        result = campaign.run_playbook("train", {"stage": stage, "phase03": phase03, "force": force},
                                       on_task=lambda task, n: progress(f"[{n}] {task}"))
    present.run_result("train", result)
    present.lines(campaign.job_lines())


@app.command()
def logs(
    job: str | None = typer.Argument(None, help="phase03, stage1 (or 1), stage2, stage3; default: every job"),
    follow: bool = typer.Option(False, "--follow", "-f"),
    lines: int = typer.Option(50, "--lines", "-n", min=1),
) -> None:
    """Tail a job's log on the instance."""
    argv = campaign.logs_command(job, follow, lines, tty=follow and sys.stdout.isatty())
    os.execvp(argv[0], argv)


@app.command()
def plot(output: str = typer.Option("loss.png", "--output", "-o", help="PNG to write")) -> None:
    """Write a PNG of loss per step for each stage, from the instance's logs."""
    out.print(f"wrote {campaign.plot(output)}")


@app.command()
def run(
    playbook: str = typer.Argument(..., help="a playbook in playbooks/ (name or file) or a path"),
    extra: list[str] = typer.Option([], "-e", "--extra-vars", help="key=value, repeatable"),
    limit: str | None = typer.Option(None, "--limit", "-l"),
) -> None:
    """Run a playbook against the campaign inventory through ansible-runner."""
    path = campaign.resolve_playbook(playbook)
    extravars = _extravars(extra)
    with present.spinner(f"{path.stem}") as progress:
        result = campaign.run_playbook(str(path), extravars, on_task=lambda task, n: progress(f"[{n}] {task}"), limit=limit)
    present.run_result(path.stem, result)


@local_app.command("preempt")
def local_preempt(instance: int | None = typer.Argument(None, help="default: the campaign's instance")) -> None:
    """Kill a local instance's container the way a host preempts it (status becomes exited)."""
    out.print(f"local instance {campaign.local_preempt(instance)} preempted")


@local_app.command("outbid")
def local_outbid(
    instance: int | None = typer.Argument(None, help="default: the campaign's instance"),
    price: float | None = typer.Option(None, "--price", help="the competing bid in $/h (default: the instance's bid + $0.01)"),
) -> None:
    """A competing bid takes a local interruptible instance's machine: it stops, its processes killed, its disk kept."""
    iid, bid = campaign.local_outbid(instance, price)
    out.print(f"local instance {iid} outbid (a competing bid of ${bid:g}/h)")


@local_app.command("competitor-leaves")
def local_competitor_leaves(instance: int | None = typer.Argument(None, help="default: the campaign's instance")) -> None:
    """The competitor on a local instance's machine leaves: what it outbid there runs again (processes gone, files kept)."""
    back = campaign.local_competitor_leaves(instance)
    out.print(f"running again: {', '.join(map(str, back))}" if back else "nothing was waiting for that machine")


@local_app.command("clean")
def local_clean() -> None:
    """Remove every container the local double started for this project."""
    out.print(f"removed {campaign.local_clean()} container(s)")


@local_app.command("image")
def local_image(recipe: str = typer.Argument("host", help="host or bare")) -> None:
    """Build (once, then cached) a test-host image with debootstrap; print its name."""
    out.print(campaign.local_image(recipe))


CacheDirOpt = typer.Option(None, "--dir", help="the cache directory (default: repo_build_cache_dir's, ~/.cache/volt-ansible/builds)")


@cache_app.command("list")
def cache_list(cache_dir: str | None = CacheDirOpt) -> None:
    """Every build cache entry: key, size, the instance that built it, when, the commit."""
    where = campaign.cache_dir(cache_dir)
    found = campaign.cache_entries(where)
    if not found:
        out.print(f"the build cache at {where} is empty")
        return
    out.print(present.cache_table(found))
    out.print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'} in {where}; an entry is as trustworthy as the instance that built it")


@cache_app.command("clear")
def cache_clear(key: str | None = typer.Argument(None, help="an entry's key (or a unique prefix of it)"),
                everything: bool = typer.Option(False, "--all", help="every entry"), cache_dir: str | None = CacheDirOpt) -> None:
    """Drop one build cache entry (KEY) or all of them (--all): the next build of it compiles."""
    where = campaign.cache_dir(cache_dir)
    gone = campaign.cache_clear(where, key, everything)
    for e in gone:
        out.print(f"removed {e.key[:16]} (built by {escape(e.built_by)}, commit {e.commit[:12] or '?'})")
    out.print(f"removed {len(gone)} entr{'y' if len(gone) == 1 else 'ies'} from {where}")


def _private() -> None:
    """What the CLI writes is the operator's alone: .volt/ (campaign key, state, logs, the double's API key), runs/ (model
    weights), the runner's temp dirs. umask 077 covers every file and directory made from here on, by this process and
    the ansible/rsync/ssh it starts; an existing .volt/ with wider bits (made by an older version) is closed too."""
    os.umask(0o077)
    with suppress(OSError):
        d = campaign.volt_dir()
        if d.is_dir() and d.stat().st_mode & 0o077:
            d.chmod(0o700)


def main() -> None:
    try:
        _private()
        rc = app(standalone_mode=False)
    except VoltError as e:
        present.error(str(e))
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted: the state file is consistent; `volt-ansible status` shows where things stand")
        sys.exit(130)
    except click.ClickException as e:  # usage errors
        e.show()
        sys.exit(e.exit_code)
    sys.exit(rc if isinstance(rc, int) else 0)
