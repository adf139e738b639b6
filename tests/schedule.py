"""How the suite is run: every test's kind from the fixtures it uses, a timeout from its kind, an xdist group for
tests that share a module-scoped host, and the slowest first when it runs on several workers (pytest-xdist).

Kinds (markers registered in pyproject.toml, select with -m):
  unit      no podman: pure Python, or the CLI refusing before it rents anything
  role      a podman test host reached over SSH (make_host and the fixtures built on it, a module's shared host)
  molecule  a role's molecule scenario (tests/test_molecule.py)
  e2e       the CLI on the local backend: the double rents podman instances (the `project` fixture + podman)
A test that needs more than its kind allows says so itself with @pytest.mark.timeout(N).

tests/durations.json holds each test's seconds (setup + call + teardown) from a recent full run: the scheduler hands
out the longest first, so no long test starts last on an otherwise idle machine. Regenerate it with
VOLT_DURATIONS_OUT=tests/durations.json scripts/test.sh; a test it does not know gets its kind's typical time.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

KINDS = ("unit", "role", "molecule", "e2e")
# What a test of the kind needs on the 2-core CI machine with 3 workers, with a margin of 2-4x over the slowest seen.
TIMEOUTS = {"unit": 60, "role": 300, "molecule": 600, "e2e": 600}
TYPICAL_S = {"unit": 0.5, "role": 20.0, "molecule": 50.0, "e2e": 60.0}
ROLE_FIXTURES = {"make_host", "built_host"}
# Module-scoped fixtures that are cheap to make once per worker: their tests need not share one worker.
CHEAP_SHARED = {"archive"}
DURATIONS = Path(__file__).with_name("durations.json")


def kind(item: pytest.Item) -> str:
    names = set(getattr(item, "fixturenames", ()))
    if item.path.name == "test_molecule.py":
        return "molecule"
    podman = item.get_closest_marker("podman") is not None
    if podman and "project" in names:
        return "e2e"
    if podman or names & ROLE_FIXTURES:
        return "role"
    return "unit"


def shared_group(item: pytest.Item) -> str | None:
    """The module's name when the test uses an expensive module-scoped fixture: those tests stay on one worker."""
    info = getattr(item, "_fixtureinfo", None)
    for name, defs in (info.name2fixturedefs.items() if info else ()):
        if defs and defs[-1].scope in ("module", "class") and name not in CHEAP_SHARED:
            return item.path.stem
    return None


def _known_durations() -> dict[str, float]:
    try:
        return {k: float(v) for k, v in json.loads(DURATIONS.read_text()).items()}
    except (OSError, ValueError):
        return {}


def _distributed(config: pytest.Config) -> bool:
    return bool(getattr(config.option, "numprocesses", None)) and getattr(config.option, "dist", "no") != "no"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    kinds = {}
    for item in items:
        k = kinds[item.nodeid] = kind(item)
        item.add_marker(getattr(pytest.mark, k))
        if item.get_closest_marker("timeout") is None:
            item.add_marker(pytest.mark.timeout(TIMEOUTS[k]))
        if (group := shared_group(item)) and item.get_closest_marker("xdist_group") is None:
            item.add_marker(pytest.mark.xdist_group(group))
    if not _distributed(config):
        return  # one process: keep the files' own order (what a developer running one file expects)
    known = _known_durations()
    weight: dict[str, float] = {}
    unit_of = {}
    for item in items:
        group = item.get_closest_marker("xdist_group")
        unit = f"@{group.args[0] if group.args else group.kwargs.get('name')}" if group else item.nodeid
        unit_of[item.nodeid] = unit
        weight[unit] = weight.get(unit, 0.0) + known.get(item.nodeid, TYPICAL_S[kinds[item.nodeid]])
    first_seen = {u: i for i, u in reversed(list(enumerate(unit_of[it.nodeid] for it in items)))}
    # Longest work unit first; a group's tests stay together and in their file's order.
    items.sort(key=lambda it: (-weight[unit_of[it.nodeid]], first_seen[unit_of[it.nodeid]]))


_seen: dict[str, float] = {}  # nodeid -> seconds, setup + call + teardown (what VOLT_DURATIONS_OUT writes)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    _seen[report.nodeid] = _seen.get(report.nodeid, 0.0) + report.duration


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session) -> None:
    out = os.environ.get("VOLT_DURATIONS_OUT")
    if out and _seen and not hasattr(session.config, "workerinput"):  # the controller writes it, not each worker
        Path(out).write_text(json.dumps({k: round(v, 1) for k, v in sorted(_seen.items())}, indent=1) + "\n")
