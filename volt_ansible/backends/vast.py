"""The Vast API through the real `vastai` SDK: the vast backend, and the protocol the local backend's double speaks."""

from __future__ import annotations

import os
import re
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import requests

from volt_ansible import crashpoints
from volt_ansible.backends.base import Backend
from volt_ansible.errors import VoltError
from volt_ansible.spec import InstanceSpec

# VAST_API_KEY and any other VAST_*KEY/TOKEN/SECRET/PASSWORD: held in this process's memory only, never left in
# os.environ, which every child inherits and ansible-runner records whole (artifacts/<id>/command, env.list).
SECRET_ENV = re.compile(r"^VAST_(?:.*_)?(?:API_?KEY|KEY|TOKEN|SECRET|PASSWORD|PASS)(?:_.*)?$")
_secrets: dict[str, str] = {}


def take_secrets() -> dict[str, str]:
    """Move the Vast secrets out of os.environ (idempotent); returns what this process holds."""
    for name in [k for k in os.environ if SECRET_ENV.match(k)]:
        _secrets[name] = os.environ.pop(name)
    return _secrets


@dataclass(frozen=True)
class Filter:
    key: str  # the spec key, named in errors
    term: str  # the SDK query-language term
    ok: Callable[[dict], bool]
    says: str  # human form


def _at_least(field: str, minimum: float) -> Callable[[dict], bool]:
    return lambda o: o.get(field, 0) >= minimum


def filters(spec: InstanceSpec) -> list[Filter]:
    """The spec's offer filters: one list serves the query, the local re-check and the no-match report."""
    s = spec
    return [
        Filter("gpu_name", f"gpu_name={s.gpu_name.replace(' ', '_')}", lambda o: o.get("gpu_name") == s.gpu_name, f"GPU {s.gpu_name}"),
        Filter("num_gpus", f"num_gpus={s.num_gpus}", lambda o: o.get("num_gpus") == s.num_gpus, f"{s.num_gpus} GPU(s)"),
        Filter("cpu_cores_min", f"cpu_cores>={s.cpu_cores_min}", _at_least("cpu_cores", s.cpu_cores_min), f">= {s.cpu_cores_min} CPU cores"),
        # cpu_ram is typed in GB and sent in MB (x1000) by the SDK; offers report MB
        Filter("cpu_ram_gb_min", f"cpu_ram>={s.cpu_ram_gb_min:g}", _at_least("cpu_ram", s.cpu_ram_gb_min * 1000), f">= {s.cpu_ram_gb_min:g} GB RAM"),
        Filter("disk_gb_min", f"disk_space>={s.disk_gb_min:g}", _at_least("disk_space", s.disk_gb_min), f">= {s.disk_gb_min:g} GB disk"),
        Filter("cuda_min", f"cuda_vers>={s.cuda_min:g}", _at_least("cuda_max_good", s.cuda_min), f"CUDA >= {s.cuda_min:g}"),
        Filter("dph_max", f"dph<={s.dph_max:g}", lambda o: o.get("dph_total", 1e9) <= s.dph_max, f"<= ${s.dph_max:g}/h"),
        Filter(
            "reliability_min",
            f"reliability>={s.reliability_min:g}",
            _at_least("reliability", s.reliability_min),
            f"reliability >= {s.reliability_min:g}",
        ),
    ]


def query(spec: InstanceSpec) -> str:
    return " ".join(f.term for f in filters(spec))


ORDER = "dph_total,cpu_cores-,reliability-"


def rank(offers: list[dict]) -> list[dict]:
    """Cheapest first; at equal price more CPU cores (Phase 0.3 is CPU-bound), then reliability."""
    return sorted(offers, key=lambda o: (o.get("dph_total", 1e9), -o.get("cpu_cores", 0), -o.get("reliability", 0), o.get("id", 0)))


def offer_type(spec: InstanceSpec) -> str:
    return "interruptible" if spec.pricing == "interruptible" else "on-demand"


def _http_error(e: requests.HTTPError, what: str) -> VoltError:
    status = e.response.status_code if e.response is not None else 0
    if status == 401:
        return VoltError("the Vast API rejected the API key (401): set VAST_API_KEY to a valid key from https://cloud.vast.ai/account/")
    if status == 429:
        return VoltError(f"{what}: the Vast API is rate-limiting us (429) after retries: wait a minute and run it again")
    detail = ""
    try:
        body = e.response.json()
        detail = body.get("msg") or body.get("error") or ""
    except Exception:
        pass
    return VoltError(f"{what}: Vast API answered HTTP {status}{': ' + detail if detail else ''}")


def _sdk_class() -> type:
    """The SDK's VastAI class, imported when a client is made (--help, check, logs, ssh make none). The package's
    __init__ also imports the SDK's serverless client and worker (aiohttp and more: ~0.45 s of CPU per command,
    `python -X importtime -c 'import vastai'`) and skips them when they cannot be imported. volt-ansible uses none of
    them: their import is blocked for that moment (a None in sys.modules fails it at once) and unblocked after."""
    blocked = "vastai.serverless" not in sys.modules
    if blocked:
        sys.modules["vastai.serverless"] = None  # type: ignore[assignment]
    try:
        from vastai import VastAI
    finally:
        if blocked and "vastai.serverless" in sys.modules and sys.modules["vastai.serverless"] is None:
            del sys.modules["vastai.serverless"]
    return VastAI


class VastApi(Backend):
    """One SDK client and the calls volt-ansible makes, each turned into a one-line error on failure."""

    def __init__(self, api_key: str | None, url: str | None = None):
        try:
            self.sdk = _sdk_class()(api_key=api_key, server_url=url, raw=True, quiet=True)
        except RuntimeError:
            raise VoltError(
                "no Vast API key: export VAST_API_KEY=<key> (or run `vastai set api-key <key>` once); for the local test world use --backend local"
            ) from None
        take_secrets()  # the client holds the key now: no child process (ansible, ssh, rsync) inherits it

    def _call(self, what: str, fn: Callable, *args, **kw):
        try:
            return fn(*args, **kw)
        except requests.HTTPError as e:
            raise _http_error(e, what) from None
        except requests.RequestException as e:
            raise VoltError(f"{what}: cannot reach the Vast API ({type(e).__name__}): check the network and retry") from None

    def search(self, spec: InstanceSpec, limit: int | None = None) -> list[dict]:
        offers = self._call(
            "search offers", self.sdk.search_offers, query=query(spec), type=offer_type(spec), order=ORDER, limit=limit, storage=spec.disk_gb
        )
        checks = filters(spec)
        # Re-check locally: the API is the first filter, the spec is the last word.
        return rank([o for o in offers if all(f.ok(o) for f in checks)])[:limit]

    def explain_no_match(self, spec: InstanceSpec) -> str:
        """Name the filter that excludes the most offers among everything rentable."""
        everything = self._call("search offers", self.sdk.search_offers, query="", type=offer_type(spec), limit=1000)
        if not everything:
            return "the API lists no rentable offer at all"
        counts = [(sum(not f.ok(o) for o in everything), f) for f in filters(spec)]
        n, worst = max(counts, key=lambda c: c[0])
        return f"{worst.key} ({worst.says}) excludes {n} of {len(everything)} rentable offers: relax volt_instance.{worst.key} in group_vars/all.yml"

    def create(self, offer_id: int, spec: InstanceSpec, label: str, bid: float | None = None) -> int:
        kw = {"bid_price": bid} if bid is not None else {}
        crashpoints.here("create.request")
        res = self._call(
            f"create instance on offer {offer_id}",
            self.sdk.create_instance,
            offer_id,
            image=spec.image,
            disk=spec.disk_gb,
            label=label,
            ssh=True,
            direct=True,
            **kw,
        )
        crashpoints.here("create.answered")
        if not res or not res.get("success") or not res.get("new_contract"):
            msg = (res or {}).get("msg") or (res or {}).get("error") or "no reason given"
            raise VoltError(f"Vast refused to create an instance on offer {offer_id}: {msg}; pick another with --offer or run again")
        return int(res["new_contract"])

    def instances(self) -> list[dict]:
        """Every instance of the account (the v1 listing, all pages). Anything but a list of rows is an error: a tool that
        read a malformed answer as "no instances" would rent duplicates or leave one billing."""
        rows: list[dict] = []
        params: dict = {"select_filters": {}, "order_by": [{"col": "id", "dir": "asc"}], "limit": 25}
        for _ in range(1000):
            page = self._call("list instances", self.sdk.show_instances_v1, params)
            found = page.get("instances") if isinstance(page, dict) else None
            if not isinstance(found, list) or not all(isinstance(r, dict) and isinstance(r.get("id"), int) for r in found):
                raise VoltError(f"list instances: the Vast API answered something that is not a list of instances ({str(page)[:120]!r}); "
                                "nothing was changed: run it again, and check https://cloud.vast.ai/instances/ if it persists")
            rows += found
            if not page.get("next_token"):
                return rows
            params["after_token"] = page["next_token"]
        raise VoltError("list instances: the Vast API kept paging past 25000 instances; nothing was changed")

    def attach_ssh(self, instance_id: int, public_key: str) -> None:
        self._call(f"attach SSH key to instance {instance_id}", self.sdk.attach_ssh, instance_id, public_key)

    def show(self, instance_id: int) -> dict | None:
        try:
            return self._call(f"show instance {instance_id}", self.sdk.show_instance, instance_id)
        except VoltError as e:
            if "HTTP 404" in str(e):
                return None
            raise

    def change_bid(self, instance_id: int, price: float) -> None:
        res = self._call(f"change the bid of instance {instance_id}", self.sdk.change_bid, instance_id, price=price)
        if isinstance(res, dict) and res.get("success") is False:
            raise VoltError(f"change the bid of instance {instance_id}: Vast refused ({res.get('msg') or res.get('error')})")

    def copy_direct(self, src_id: int, dst_id: int, src_path: str, dst_path: str) -> None:
        """Start a host-to-host copy (Vast's copy_direct: works while the source is stopped, never on this machine's link)."""
        from vastai.api import storage

        what = f"copy C.{src_id}:{src_path} to C.{dst_id}:{dst_path}"
        res = self._call(what, storage.copy, self.sdk.client, f"C.{src_id}", f"C.{dst_id}", src_path, dst_path)
        if isinstance(res, dict) and res.get("success") is False:
            raise VoltError(f"{what}: Vast refused ({res.get('msg') or res.get('error')})")

    def execute(self, instance_id: int, command: str) -> str:
        """Vast's limited command (ls, du) on an instance, stopped or not: its output."""
        what = f"execute {command!r} on instance {instance_id}"
        try:
            res = self._call(what, self.sdk.execute, instance_id, command)
        except TimeoutError:
            raise VoltError(f"{what}: no result from the Vast API in time") from None
        if isinstance(res, dict):
            raise VoltError(f"{what}: Vast refused ({res.get('msg') or res.get('error') or res})")
        return str(res)

    def pending_price_increases(self) -> list[dict]:
        res = self._call("list pending price increases", self.sdk.show_pending_price_increases)
        rows = res.get("pending_price_increases") if isinstance(res, dict) else None
        if not isinstance(rows, list):
            raise VoltError(f"list pending price increases: the Vast API answered something that is not a list ({str(res)[:120]!r})")
        return rows

    def answer_price_increase(self, instance_id: int, accept: bool) -> None:
        fn = self.sdk.accept_price_increase if accept else self.sdk.reject_price_increase
        what = f"{'accept' if accept else 'reject'} the price increase of instance {instance_id}"
        try:
            self._call(what, fn, instance_id=instance_id)
        except LookupError:
            raise VoltError(f"{what}: it is no longer pending") from None

    def destroy(self, instance_id: int) -> bool:
        """True when destroyed now, False when the API no longer knows it."""
        try:
            self._call(f"destroy instance {instance_id}", self.sdk.destroy_instance, instance_id)
        except VoltError as e:
            if "HTTP 404" in str(e):
                return False
            raise
        return True



class VastBackend(VastApi):
    """Vast.ai itself: the key from VAST_API_KEY (taken out of the environment), else the SDK's key file."""

    name = "vast"

    def __init__(self, volt_dir: Path):
        super().__init__(take_secrets().get("VAST_API_KEY") or None)
