"""volt-ansible: parse, call campaign, print. Every VoltError becomes one red line and exit 1."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress

import typer
import yaml
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from volt_ansible import campaign, notices
from volt_ansible.errors import VoltError

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Rent a Vast.ai GPU and run a Volt-X training campaign on it.")
local_app = typer.Typer(no_args_is_help=True, help="The embedded local backend: Vast API double + podman instances.")
app.add_typer(local_app, name="local")
cache_app = typer.Typer(no_args_is_help=True, help="The controller's build cache (roles/repo_build, repo_build_cache).")
app.add_typer(cache_app, name="cache")
out = Console()
err = Console(stderr=True)
notices.set_sink(lambda msg: err.print(f"[yellow]note:[/] {escape(msg)}", soft_wrap=True, highlight=False))

BackendOpt = typer.Option("local", "--backend", "-b", help="vast (Vast.ai) or local (embedded test world)", envvar="VOLT_BACKEND")


def _backend(value: str) -> str:
    if value not in ("vast", "local"):
        raise VoltError(f"--backend {value!r} is not a backend: use vast or local")
    return value


@contextmanager
def _spinner(title: str) -> Iterator:
    with out.status(title) as status:
        yield lambda msg: status.update(f"{title}: {escape(msg)}")


def _offer_table(offers: list[dict]) -> Table:
    t = Table("ID", "$/h", "GPU", "cores", "RAM GB", "disk GB", "CUDA", "reliab.", "inet up/down Mb/s")
    for o in offers:
        t.add_row(
            str(o["id"]),
            f"{o['dph_total']:.3f}",
            f"{o['num_gpus']}x {o['gpu_name']}",
            str(o["cpu_cores"]),
            f"{o['cpu_ram'] / 1000:.0f}",
            f"{o['disk_space']:.0f}",
            f"{o['cuda_max_good']:g}",
            f"{o['reliability']:.3f}",
            f"{o['inet_up']:.0f}/{o['inet_down']:.0f}",
        )
    return t


@app.command()
def offers(backend: str = BackendOpt, limit: int = typer.Option(10, "--limit", "-n", min=1)) -> None:
    """List offers matching group_vars/all.yml, cheapest first, then more CPU cores, then reliability."""
    found = campaign.offers(_backend(backend), limit)
    out.print(_offer_table(found))


@app.command()
def check(job: list[str] = typer.Option([], "--job", "-j", help="check only the data these jobs need (phase03, stage1, ...)")) -> None:
    """Pre-flight, before renting: every data source exists and is readable; sizes and digests (cached) recorded."""
    from volt_ansible import datasync

    with _spinner("hashing data sources") as progress:
        report = datasync.check(jobs=job or None, progress=lambda done, total: progress(f"{done / 1e9:.2f} / {total / 1e9:.2f} GB"))
    for line in report.lines():
        out.print(line, soft_wrap=True, highlight=False)


@app.command()
def provision(
    backend: str = BackendOpt,
    offer: int | None = typer.Option(None, "--offer", help="rent this offer ID instead of the best match"),
    plan: bool = typer.Option(False, "--plan", help="print what would be rented and its cost; rent nothing"),
) -> None:
    """Rent the best matching instance, wait until SSH works, record it in .volt/state.json."""
    backend = _backend(backend)
    if plan:
        p = campaign.plan(backend, offer)
        out.print(_offer_table([p.offer]))
        out.print(f"Would rent offer {p.offer['id']} at ${p.dph:.3f}/h = ${p.per_day:.2f}/day (nothing rented: --plan)")
        return
    with _spinner("provisioning") as progress:
        inst = campaign.provision(backend, offer, progress)
    out.print(f"[green]instance {inst.id} running[/] ({inst.gpu_name}, ${inst.dph_total:.3f}/h)")
    out.print("ssh: " + " ".join(campaign.ssh_command([])), soft_wrap=True, highlight=False)


@app.command()
def status(jobs_too: bool = typer.Option(True, "--jobs/--no-jobs", help="also read the training jobs over SSH")) -> None:
    """What this campaign has rented, its live state, its cost so far, and each training job."""
    s = campaign.status()
    if s.state.instance is None:
        out.print("no instance provisioned")
    else:
        i, live = s.state.instance, s.live
        shown = (live or {}).get("actual_status") or ("gone (not in the API)" if live is None else "unknown")
        up = (time.time() - i.created_at) / 3600
        out.print(
            f"instance {i.id} {escape('[' + i.backend + ']')} {i.gpu_name}: [bold]{shown}[/]  ssh {i.ssh_host}:{i.ssh_port}  "
            f"${i.dph_total:.3f}/h  up {up:.2f} h"
        )
    for line in s.elsewhere:
        out.print(f"[yellow]{escape(line)}[/]", soft_wrap=True, highlight=False)
    for r in s.state.retired:
        out.print(f"instance {r.id} lost ({r.status}), kept: its disk may hold files newer than the backup; `finish` or `destroy` removes it")
    if s.state.recovery:
        out.print(f"[yellow]recovery under way[/] ({escape(s.state.recovery.reason)}): `volt-ansible recover` continues it")
    if s.state.stopped:
        out.print(f"[red]campaign stopped[/]: {escape(s.state.stopped)}")
    if s.state.home:
        h = s.state.home
        newest = f"{h.newest_epoch['job']} epoch {h.newest_epoch['epoch']}" if h.newest_epoch else "none"
        out.print(f"home ({time.strftime('%H:%M:%S', time.localtime(h.at))}): {h.files} file(s), {h.bytes / 1e6:.1f} MB, "
                  f"newest epoch checkpoint {newest}; missing: {', '.join(h.missing) or 'nothing'}", soft_wrap=True, highlight=False)
    if jobs_too and s.state.instance is not None and (s.live or {}).get("actual_status") == "running":
        from volt_ansible import jobs

        snap = campaign.job_snapshot()
        out.print(escape(campaign.projection(snap).line()), soft_wrap=True, highlight=False)
        for line in jobs.format_snapshot(snap):
            out.print(escape(line), soft_wrap=True, highlight=False)
    else:
        out.print(f"cost so far: ${s.cost_usd:.4f} over {len(s.state.ledger)} instance(s)")


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
    d = campaign.destroy(force=force)
    out.print(f"instance(s) {', '.join(map(str, d.ids))} destroyed")
    if d.lost:
        newest = f"{d.newest_epoch['path']} (epoch {d.newest_epoch['epoch']})" if d.newest_epoch else "none"
        judged = f" ({escape(d.note)})" if d.note else ""
        out.print(f"[yellow]lost[/] (not home){judged}: {', '.join(d.lost)}; newest epoch checkpoint home: {newest}", soft_wrap=True, highlight=False)
    elif d.note:
        out.print(f"nothing lost ({escape(d.note)})", soft_wrap=True, highlight=False)


@app.command()
def recover(
    from_scratch: bool = typer.Option(False, "--from-scratch", help="recover even with no backup: training starts from zero"),
    force: bool = typer.Option(False, "--force", help="replace the instance even though it still answers"),
) -> None:
    """After a preemption: rent the same spec, prepare it, push the data and the newest epoch checkpoint home, resume."""
    with _spinner("recover") as progress:
        r = campaign.recover(from_scratch=from_scratch, force=force, progress=progress)
    out.print(f"[green]instance {r.new.id} replaces {r.lost_id}[/] ({escape(r.reason)}); jobs started again after {r.seconds:.0f} s")
    out.print(escape(r.restore.describe()), soft_wrap=True, highlight=False)


@app.command()
def finish() -> None:
    """Once every stage's output and the codebook are home and verified: destroy the instance, print the summary."""
    with _spinner("finish") as progress:
        f = campaign.finish(progress)
    for line in f.lines:
        out.print(escape(line), soft_wrap=True, highlight=False)


@app.command()
def watch(
    interval: float | None = typer.Option(None, "--interval", "-i", min=0.01, help="minutes between backups (volt_watch.backup_interval_min)"),
    auto_recover: bool | None = typer.Option(None, "--recover/--no-recover", help="replace a lost instance (default volt_watch.auto_recover)"),
    auto_finish: bool | None = typer.Option(None, "--finish/--no-finish", help="finish when the last stage is home (default volt_watch.auto_finish)"),
    once: bool = typer.Option(False, "--once", help="one round, then exit"),
) -> None:
    """Back up every N minutes, recover after a preemption, stop at the budget, finish at the end. Safe to stop and restart."""
    from volt_ansible import spec as spec_mod

    w = spec_mod.load().watch
    rec = w.auto_recover if auto_recover is None else auto_recover
    fin = w.auto_finish if auto_finish is None else auto_finish
    with _spinner("watch") as progress:
        for r in campaign.watch(rec, fin, interval, once, progress=progress):
            out.rule(time.strftime("%H:%M:%S"))
            for line in r.lines:
                out.print(escape(line), soft_wrap=True, highlight=False)
            if r.done:
                out.print(f"watch: {escape(r.done)}")


class _Tracks:
    """up's display: one line per track (rent, playbook task, data transfer), refreshed every second."""

    def __init__(self) -> None:
        import threading

        from rich.live import Live

        self.rows = {"rent": "", "play": "", "data": ""}
        self.live = Live(self._render(), console=out, refresh_per_second=2, transient=True)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._poll, daemon=True)

    def _render(self) -> Table:
        t = Table.grid(padding=(0, 2))
        for name, text in self.rows.items():
            if text:
                t.add_row(f"[bold]{name}[/]", escape(text))
        return t

    def _poll(self) -> None:
        while not self.stop.wait(1.0):
            with suppress(VoltError, OSError, ValueError):
                self.rows["data"] = campaign.data_track()
            self.live.update(self._render())

    def rent(self, msg: str) -> None:
        self.rows["rent"] = msg
        self.live.update(self._render())

    def task(self, task: str, n: int) -> None:
        self.rows["play"] = f"[{n}] {task}"
        self.live.update(self._render())

    def __enter__(self) -> _Tracks:
        self.live.__enter__()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.live.__exit__(*exc)


@app.command()
def up(
    backend: str = BackendOpt,
    stage: str = typer.Option("all", "--stage", "-s", help="all (1 -> 2 -> 3), 1, 2, 3 or none"),
    phase03: bool = typer.Option(True, "--phase03/--no-phase03", help="run Phase 0.3 beside it on the CPU"),
    yes: bool = typer.Option(False, "--yes", "-y", help="rent without asking"),
    then_watch: bool = typer.Option(False, "--watch", help="then watch: back up, recover, finish (volt_watch)"),
) -> None:
    """The whole campaign in one command: pre-flight, plan, rent, data + build + CUDA check in parallel, each job
    as soon as it can start. Interrupt it at any point and run it again: it continues (no second instance)."""
    backend = _backend(backend)
    with _spinner("pre-flight") as progress:
        p = campaign.up_plan(backend, stage, phase03, progress)
    for line in p.lines():
        out.print(escape(line), soft_wrap=True, highlight=False)
    if p.instance is None and not yes and not typer.confirm("Rent it and start?"):
        raise typer.Exit(1)
    with _Tracks() as tracks:
        result = campaign.up(backend, stage, phase03, progress=tracks.rent, on_task=tracks.task)
    _run_result("up", result)
    for line in campaign.job_lines():
        out.print(escape(line), soft_wrap=True, highlight=False)
    if then_watch:
        watch(interval=None, auto_recover=None, auto_finish=None, once=False)


def _extravars(pairs: list[str]) -> dict:
    extra: dict = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise VoltError(f"-e {pair!r} is not key=value: write it as -e name=value")
        extra[key.strip()] = yaml.safe_load(value) if value else ""
    return extra


def _run_result(name: str, result) -> None:
    refused = [f for f in result.failures if f.host_key]  # nothing ran there: its one line says it all
    for f in refused or result.failures:
        head = "[red]error:[/] " if f.host_key else f"[red]FAILED[/] task '{escape(f.task)}' on {f.host}: "
        err.print(head + escape(f.msg), soft_wrap=True, highlight=False)
    if result.status == "canceled":
        err.print(f"interrupted: {name} stopped; the instance and the state are consistent: run the same command again to continue")
        raise typer.Exit(130)
    if result.rc != 0:
        if not result.failures:
            err.print(f"[red]ansible-playbook exited {result.rc}[/] ({result.status}); log: {result.log}")
        raise typer.Exit(result.rc or 1)
    out.print(f"[green]{name} ok[/]: changed={result.changed}  log: {result.log}")


@app.command()
def backup() -> None:
    """Pull finished epoch checkpoints, stage outputs, the codebook and logs home, each verified by digest."""
    with _spinner("backup") as progress:
        result, summary = campaign.backup(on_task=lambda task, n: progress(f"[{n}] {task}"))
    _run_result("backup", result)
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
    with _spinner("train") as progress:
        result = campaign.run_playbook("train", {"stage": stage, "phase03": phase03, "force": force},
                                       on_task=lambda task, n: progress(f"[{n}] {task}"))
    _run_result("train", result)
    for line in campaign.job_lines():
        out.print(escape(line), soft_wrap=True, highlight=False)


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
    from volt_ansible import playbook as pb

    path = pb.resolve(campaign.project_root(), playbook)
    extravars = _extravars(extra)
    with _spinner(f"{path.stem}") as progress:
        result = campaign.run_playbook(str(path), extravars, on_task=lambda task, n: progress(f"[{n}] {task}"), limit=limit)
    _run_result(path.stem, result)


@local_app.command("preempt")
def local_preempt(instance: int | None = typer.Argument(None, help="default: the campaign's instance")) -> None:
    """Kill a local instance's container the way a host preempts it (status becomes exited)."""
    from volt_ansible.local.double import LocalVast
    from volt_ansible.state import load, volt_dir

    iid = instance if instance is not None else (load().instance.id if load().instance else None)
    if iid is None:
        raise VoltError("no instance to preempt: name one, or provision first")
    LocalVast(volt_dir() / "local").preempt(iid)
    out.print(f"local instance {iid} preempted")


@local_app.command("clean")
def local_clean() -> None:
    """Remove every container the local double started for this project."""
    from volt_ansible.local.double import LocalVast
    from volt_ansible.state import volt_dir

    n = LocalVast(volt_dir() / "local").clean()
    out.print(f"removed {n} container(s)")


@local_app.command("image")
def local_image(recipe: str = typer.Argument("host", help="host or bare")) -> None:
    """Build (once, then cached) a test-host image with debootstrap; print its name."""
    from volt_ansible.local import image

    if recipe not in image.RECIPES:
        raise VoltError(f"no image recipe {recipe!r}: choose one of {', '.join(image.RECIPES)}")
    out.print(image.ensure(image.RECIPES[recipe]))


def _private() -> None:
    """What the CLI writes is the operator's alone: .volt/ (campaign key, state, logs, the double's API key), runs/ (model
    weights), the runner's temp dirs. umask 077 covers every file and directory made from here on, by this process and
    the ansible/rsync/ssh it starts; an existing .volt/ with wider bits (made by an older version) is closed too."""
    os.umask(0o077)
    from volt_ansible.state import volt_dir

    with suppress(OSError):
        d = volt_dir()
        if d.is_dir() and d.stat().st_mode & 0o077:
            d.chmod(0o700)


CacheDirOpt = typer.Option(None, "--dir", help="the cache directory (default: repo_build_cache_dir's, ~/.cache/volt-ansible/builds)")


@cache_app.command("list")
def cache_list(cache_dir: str | None = CacheDirOpt) -> None:
    """Every build cache entry: key, size, the instance that built it, when, the commit."""
    from volt_ansible import buildcache

    where = cache_dir or buildcache.default_dir()
    found = buildcache.entries(where)
    if not found:
        out.print(f"the build cache at {where} is empty")
        return
    t = Table("KEY", "SIZE", "BUILT BY", "WHEN (UTC)", "COMMIT", "NOTE")
    for e in found:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.built_at)) if e.built_at else "?"
        t.add_row(e.key[:16], f"{e.size / 1e6:.1f} MB", escape(e.built_by), when, e.commit[:12] or "?", escape(e.problem))
    out.print(t)
    out.print(f"{len(found)} entr{'y' if len(found) == 1 else 'ies'} in {where}; an entry is as trustworthy as the instance that built it")


@cache_app.command("clear")
def cache_clear(key: str | None = typer.Argument(None, help="an entry's key (or a unique prefix of it)"),
                everything: bool = typer.Option(False, "--all", help="every entry"), cache_dir: str | None = CacheDirOpt) -> None:
    """Drop one build cache entry (KEY) or all of them (--all): the next build of it compiles."""
    from volt_ansible import buildcache

    where = cache_dir or buildcache.default_dir()
    gone = buildcache.clear(where, key, everything)
    for e in gone:
        out.print(f"removed {e.key[:16]} (built by {escape(e.built_by)}, commit {e.commit[:12] or '?'})")
    out.print(f"removed {len(gone)} entr{'y' if len(gone) == 1 else 'ies'} from {where}")


def main() -> None:
    try:
        _private()
        rc = app(standalone_mode=False)
    except VoltError as e:
        err.print(f"[red]error:[/] {escape(str(e))}", soft_wrap=True, highlight=False)
        sys.exit(1)
    except typer.Exit as e:
        sys.exit(e.exit_code)
    except typer.Abort:
        err.print("aborted")
        sys.exit(130)
    except KeyboardInterrupt:
        err.print("interrupted: the state file is consistent; `volt-ansible status` shows where things stand")
        sys.exit(130)
    except Exception as e:  # click usage errors
        import click

        if isinstance(e, click.ClickException):
            e.show()
            sys.exit(e.exit_code)
        raise
    sys.exit(rc if isinstance(rc, int) else 0)
