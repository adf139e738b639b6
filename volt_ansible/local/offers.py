"""The local double's offer catalogue and Vast's search semantics over it."""

from __future__ import annotations

from typing import Any

from volt_ansible.local import bids


def _offer(id: int, gpu: str, cores: int, ram_gb: int, disk: float, cuda: float, dph: float, rel: float, **kw: Any) -> dict:
    o = {
        "id": id,
        "ask_contract_id": id,
        "machine_id": 5000 + id % 1000,
        "num_gpus": 1,
        "gpu_name": gpu,
        "gpu_ram": 32607 if "5090" in gpu else 24564,
        "cpu_name": "AMD EPYC 7642 48-Core Processor",
        "cpu_cores": cores,
        "cpu_cores_effective": float(cores),
        "cpu_ram": ram_gb * 1000,
        "disk_space": disk,
        "cuda_max_good": cuda,
        "driver_version": "570.124.04" if cuda >= 12.8 else "550.90.07",
        "inet_down": 900.0,
        "inet_up": 850.0,
        "dph_total": dph,
        "dph_base": round(dph * 0.9, 4),
        "min_bid": round(dph * 0.45, 4),
        "storage_cost": 0.15,  # $/GB/month, billed while a rented instance is stopped
        "reliability": rel,
        "reliability2": rel,
        "verification": "verified",
        "verified": True,
        "rentable": True,
        "rented": False,
        "external": False,
        "geolocation": "Local, LO",
        "public_ipaddr": "127.0.0.1",
        "score": round(rel * 100 / dph, 2),
    }
    o.update(kw)
    return o


# Shaped after real listings: a few fit the guide's spec, each other one misses it by one filter.
CATALOGUE: list[dict] = [
    _offer(31001, "RTX 5090", 192, 256, 400.0, 12.8, 0.195, 0.991),
    _offer(31002, "RTX 5090", 128, 128, 300.0, 12.9, 0.180, 0.972),
    _offer(31003, "RTX 5090", 256, 512, 500.0, 12.8, 0.180, 0.985),
    _offer(31004, "RTX 5090", 64, 128, 500.0, 12.8, 0.140, 0.990),  # too few cores
    _offer(31005, "RTX 5090", 192, 256, 120.0, 12.8, 0.160, 0.990),  # disk too small
    _offer(31006, "RTX 5090", 192, 256, 400.0, 12.8, 0.420, 0.995),  # too expensive
    _offer(31007, "RTX 5090", 192, 256, 400.0, 12.8, 0.170, 0.880),  # unreliable
    _offer(31008, "RTX 5090", 192, 32, 400.0, 12.8, 0.170, 0.970),  # too little RAM
    _offer(31009, "RTX 4090", 128, 256, 400.0, 12.4, 0.150, 0.990),  # other GPU
    _offer(31010, "RTX 4090", 64, 64, 200.0, 12.4, 0.120, 0.960),
    _offer(31011, "H100 SXM", 208, 1024, 1000.0, 12.8, 1.850, 0.995, num_gpus=1, gpu_ram=81559),
    _offer(31012, "RTX 5090", 192, 256, 400.0, 12.8, 0.150, 0.990, verified=False, verification="unverified"),
    _offer(31013, "RTX 3090", 48, 64, 250.0, 12.2, 0.090, 0.930),
    _offer(31014, "RTX 5090", 192, 256, 400.0, 12.6, 0.150, 0.990),  # CUDA too old
]


def _coerce(value: Any, like: Any) -> Any:
    """The SDK sends query numbers as strings ('128'); compare them as the field's type."""
    if isinstance(like, bool):
        return value if isinstance(value, bool) else str(value).lower() in ("true", "1")
    if isinstance(like, (int, float)) and not isinstance(value, bool):
        try:
            return float(value)
        except (TypeError, ValueError):
            return value
    return value


def _holds(field_value: Any, op: str, want: Any) -> bool:
    if op in ("in", "notin"):
        items = [_coerce(w, field_value) for w in (want if isinstance(want, list) else [want])]
        return (field_value in items) == (op == "in")
    want = _coerce(want, field_value)
    try:
        return {
            "eq": lambda: field_value == want,
            "neq": lambda: field_value != want,
            "gt": lambda: field_value > want,
            "gte": lambda: field_value >= want,
            "lt": lambda: field_value < want,
            "lte": lambda: field_value <= want,
        }[op]()
    except (KeyError, TypeError):
        return False


def matches(offer: dict, query: dict) -> bool:
    for field, cond in query.items():
        if not isinstance(cond, dict) or field not in offer:
            continue  # directives (order, type, limit, ...) and fields the double does not model
        for op, want in cond.items():
            if not _holds(offer[field], op, want):
                return False
    return True


def search(query: dict, rented_offer_ids: set[int], competitors: dict | None = None) -> list[dict]:
    """competitors: {machine_id: a competing bid there}: such a machine's min_bid is what wins it now (its GPUs run the
    competitor's bid; an on-demand rental still outranks it)."""
    offers = []
    for base in CATALOGUE:
        o = dict(base)
        if o["id"] in rented_offer_ids:
            o.update(rented=True, rentable=False)
        rival = (competitors or {}).get(str(o["machine_id"]))
        if rival is not None:
            o["min_bid"] = bids.winning_price(o, rival)
        if query.get("type") == "bid":
            o["dph_total"] = o["min_bid"]
        if matches(o, query):
            offers.append(o)
    for field, direction in reversed(query.get("order") or []):
        offers.sort(key=lambda o: (o.get(field) is None, o.get(field) or 0), reverse=(direction == "desc"))
    limit = query.get("limit")
    return offers[: int(limit)] if limit else offers
