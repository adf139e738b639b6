"""What the CLI shows: the consoles, spinners, tables, up's live display, a playbook's outcome."""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress

import typer
from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table

from volt_ansible import notices
from volt_ansible.errors import VoltError

out = Console()
err = Console(stderr=True)
notices.set_sink(lambda msg: err.print(f"[yellow]note:[/] {escape(msg)}", soft_wrap=True, highlight=False))


def line(text: str) -> None:
    """A line of plain text (no markup, no highlighting), escaped."""
    out.print(escape(text), soft_wrap=True, highlight=False)


def lines(texts: list[str]) -> None:
    for text in texts:
        line(text)


def error(text: str) -> None:
    err.print(f"[red]error:[/] {escape(text)}", soft_wrap=True, highlight=False)


@contextmanager
def spinner(title: str) -> Iterator[Callable[[str], None]]:
    with out.status(title) as status:
        yield lambda msg: status.update(f"{title}: {escape(msg)}")


def offer_table(offers: list[dict]) -> Table:
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


def cache_table(entries: list) -> Table:
    t = Table("KEY", "SIZE", "BUILT BY", "WHEN (UTC)", "COMMIT", "NOTE")
    for e in entries:
        when = time.strftime("%Y-%m-%d %H:%M", time.gmtime(e.built_at)) if e.built_at else "?"
        t.add_row(e.key[:16], f"{e.size / 1e6:.1f} MB", escape(e.built_by), when, e.commit[:12] or "?", escape(e.problem))
    return t


def status(s, read_jobs: Callable[[], tuple[str, list[str]]] | None) -> None:
    """`status`: the instance, the lost ones kept, a recovery or a stop, what is home, then (projection, job lines)
    read_jobs gives, or the cost when None."""
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
        if s.pricing:
            out.print(escape(s.pricing), soft_wrap=True, highlight=False)
    for text in s.elsewhere:
        out.print(f"[yellow]{escape(text)}[/]", soft_wrap=True, highlight=False)
    if s.watch:
        out.print(escape(s.watch), soft_wrap=True, highlight=False)
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
    if read_jobs is not None:
        projection, jobs = read_jobs()
        line(projection)
        lines(jobs)
    else:
        out.print(f"cost so far: ${s.cost_usd:.4f} over {len(s.state.ledger)} instance(s)")


def destroyed(d) -> None:
    out.print(f"instance(s) {', '.join(map(str, d.ids))} destroyed")
    if d.lost:
        newest = f"{d.newest_epoch['path']} (epoch {d.newest_epoch['epoch']})" if d.newest_epoch else "none"
        judged = f" ({escape(d.note)})" if d.note else ""
        out.print(f"[yellow]lost[/] (not home){judged}: {', '.join(d.lost)}; newest epoch checkpoint home: {newest}", soft_wrap=True, highlight=False)
    elif d.note:
        out.print(f"nothing lost ({escape(d.note)})", soft_wrap=True, highlight=False)


def run_result(name: str, result) -> None:
    """A playbook's outcome: its failures (a refused host key alone when there is one), then ok, or the exit."""
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


class Tracks:
    """up's display: one line per track (rent, playbook task, data transfer), refreshed every second."""

    def __init__(self, data: Callable[[], str]) -> None:
        self.data = data
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
                self.rows["data"] = self.data()
            self.live.update(self._render())

    def rent(self, msg: str) -> None:
        self.rows["rent"] = msg
        self.live.update(self._render())

    def task(self, task: str, n: int) -> None:
        self.rows["play"] = f"[{n}] {task}"
        self.live.update(self._render())

    def __enter__(self) -> Tracks:
        self.live.__enter__()
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop.set()
        self.thread.join()
        self.live.__exit__(*exc)
