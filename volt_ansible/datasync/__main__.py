"""The command line roles/data_sync runs on the controller (`python -m volt_ansible.datasync ...`):
`plan` (the pre-flight: JSON on stdin, the transfer plan on stdout), `sync` (the background transfer driver) and
`status` (what `tasks_from: wait` polls)."""

from __future__ import annotations

import argparse
import json
import signal
import sys
from pathlib import Path

from volt_ansible.datasync.driver import Driver
from volt_ansible.datasync.preflight import preflight
from volt_ansible.datasync.status import host_lock, wait
from volt_ansible.datasync.transport import RSYNC_MIN_VERSION, local_rsync
from volt_ansible.errors import VoltError
from volt_ansible.fileops import atomic_write


def _fail(msg: str, code: int = 2) -> int:
    print(msg, file=sys.stderr)
    return code


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m volt_ansible.datasync", description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("plan", help="pre-flight: JSON {volt_data} on stdin -> the transfer plan on stdout")
    p.add_argument("--volt-dir", required=True)
    p.add_argument("--jobs", default="", help="comma-separated jobs that must be able to start")
    s = sub.add_parser("sync", help="transfer a plan (the role starts this in the background)")
    s.add_argument("--plan", help="the plan file")
    s.add_argument("--plan-json", help="the plan itself (kept in <status>.plan.json for reference)")
    s.add_argument("--status", required=True)
    s.add_argument("--log")
    w = sub.add_parser("status", help="JSON: where the transfer stands for the wanted jobs")
    w.add_argument("--status", required=True)
    w.add_argument("--jobs", default="", help="comma-separated; empty: wait for everything")
    w.add_argument("--run-id")
    w.add_argument("--started", type=float)
    w.add_argument("--wait-s", type=float, default=0, help="look again every 0.2 s until finished, for at most this long")
    a = ap.parse_args(argv)

    if a.cmd == "plan":
        try:
            request = json.loads(sys.stdin.read())
            # {"volt_data": ..., "jobs": {volt_phase03, volt_curriculum}}, or the volt_data alone
            volt_data = request.get("volt_data", request) if isinstance(request, dict) else request
            # every enabled item is sent; --jobs only says which jobs must be able to start
            jobs_spec = request.get("jobs") if isinstance(request, dict) and isinstance(request.get("jobs"), dict) else None
            report = preflight(volt_data, Path(a.volt_dir).absolute(), [j for j in a.jobs.split(",") if j] or None, only_jobs=False,
                               jobs_spec=jobs_spec)
            plan = report.plan()
            plan["local_rsync"] = local_rsync()
            plan["rsync_min_version"] = ".".join(map(str, RSYNC_MIN_VERSION))  # what the instance's probe holds its rsync to
            # what the instance's probe needs of each item (never the local paths)
            plan["probe_items"] = [{k: it[k] for k in ("name", "dest", "kind", "digest", "size")} for it in plan["items"]]
        except VoltError as e:
            return _fail(str(e))
        except ValueError as e:
            return _fail(f"the manifest is not valid JSON: {e}")
        print(json.dumps(plan))
        return 0
    if a.cmd == "status":
        print(json.dumps(wait(Path(a.status), [j for j in a.jobs.split(",") if j] or None, a.run_id, a.started, a.wait_s)))
        return 0
    # sync
    if not (a.plan or a.plan_json):
        return _fail("sync needs --plan or --plan-json")
    status_path = Path(a.status)
    status_path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    held = host_lock(status_path.with_suffix(".lock"), blocking=True)  # one driver per host at a time
    try:
        if a.plan_json:
            plan = json.loads(a.plan_json)
            atomic_write(status_path.with_suffix(".plan.json"), json.dumps(plan, indent=1) + "\n", mode=0o600, durable=False)
        else:
            plan = json.loads(Path(a.plan).read_text())
        driver = Driver(plan, status_path, Path(a.log) if a.log else None)
        signal.signal(signal.SIGTERM, driver.stop)
        signal.signal(signal.SIGINT, driver.stop)
        rc = driver.run()
        st = driver.status
        print(json.dumps({"state": st["state"], "error": st["error"], "ready_jobs": st["ready_jobs"], "bytes_sent": st["bytes_sent"]}))
        return rc
    finally:
        if held:
            held.close()


if __name__ == "__main__":
    sys.exit(main())
