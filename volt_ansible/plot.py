"""A PNG of the training loss per step, one panel per curriculum stage, from the jobs' logs (matplotlib, Agg)."""

from __future__ import annotations

from pathlib import Path

from volt_ansible import jobs
from volt_ansible.errors import VoltError


def write_png(logs: dict[str, str], out: Path, lay: jobs.Layout | None = None, title: str | None = None) -> Path:
    """Plot loss per step of every stage that has logged any (logs: {job: log text}, e.g. jobs.fetch_logs()).

    Training loss is a line, each epoch's validation loss a dot at that epoch's last step. A step logged again
    after a resume keeps its later value. Raises VoltError when no log has a loss line yet. Returns out.
    """
    import matplotlib

    matplotlib.use("Agg")  # no display: files only
    import matplotlib.pyplot as plt

    names = [j.name for j in lay.stages] if lay else sorted(logs)
    titles = {j.name: f"{j.name}: {j.title}" for j in lay.stages} if lay else {}
    pats = {j.name: j.patterns for j in lay.jobs} if lay else {}
    series = {n: (jobs.loss_series(logs[n], pats.get(n)), jobs.validation_series(logs[n], pats.get(n))) for n in names if n in logs}
    series = {n: s for n, s in series.items() if s[0]}
    if not series:
        raise VoltError("no progress lines in the training logs yet (volt_curriculum.log_patterns.progress): nothing to plot")
    fig, axes = plt.subplots(len(series), 1, figsize=(10, 3.2 * len(series)), squeeze=False)
    try:
        for ax, (name, (losses, valid)) in zip(axes[:, 0], series.items(), strict=True):
            ax.plot([s for s, _ in losses], [v for _, v in losses], lw=1.2, label="training loss")
            if valid:
                ax.plot([s for _, s, _ in valid], [v for _, _, v in valid], "o", ms=4, label="validation loss (epoch end)")
            ax.set_title(titles.get(name, name), fontsize=10)
            ax.set_xlabel("step")
            ax.set_ylabel("loss")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=8)
        fig.suptitle(title or "Volt-X training loss per step")
        fig.tight_layout()
        out = Path(out)
        out.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(out, format="png", dpi=100)
    finally:
        plt.close(fig)
    return out
