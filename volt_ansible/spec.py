"""A validated view of group_vars/all.yml, the campaign spec Ansible reads too."""

from __future__ import annotations

import difflib
import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from volt_ansible import yamlio
from volt_ansible.errors import VoltError

SPEC_FILE = Path("group_vars/all.yml")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class InstanceSpec(_Strict):
    gpu_name: str = Field(min_length=1)
    num_gpus: int = Field(ge=1, le=16)
    cpu_cores_min: int = Field(ge=1)
    cpu_ram_gb_min: float = Field(ge=0)
    disk_gb_min: float = Field(gt=0)
    disk_gb: float = Field(gt=0)
    cuda_min: float = Field(ge=0)
    dph_max: float = Field(gt=0)
    reliability_min: float = Field(ge=0, le=1)
    image: str = Field(min_length=1)
    pricing: Literal["on-demand", "interruptible"] = "on-demand"
    # the bid in $/h, or auto: the chosen offer's min_bid x (1 + volt_interruptible.bid_margin)
    bid_dph: float | Literal["auto"] | None = None

    @field_validator("bid_dph", mode="before")
    @classmethod
    def _bid(cls, v: object) -> object:
        if v is None or v == "auto" or (isinstance(v, int | float) and not isinstance(v, bool)):
            return v
        raise ValueError("use a price in $/h (e.g. 0.12) or auto (the offer's min_bid + volt_interruptible.bid_margin)")

    @model_validator(mode="after")
    def _coherent(self) -> InstanceSpec:
        if self.disk_gb < self.disk_gb_min:
            raise ValueError(f"disk_gb ({self.disk_gb}) must be >= disk_gb_min ({self.disk_gb_min})")
        if self.pricing == "interruptible":
            if self.bid_dph is None:
                raise ValueError("pricing interruptible needs bid_dph (your bid in $/h, or auto)")
            if self.bid_dph != "auto" and self.bid_dph <= 0:
                raise ValueError(f"bid_dph ({self.bid_dph}) must be > 0 (a price in $/h, or auto)")
            if self.bid_dph != "auto" and self.bid_dph > self.dph_max:
                raise ValueError(f"bid_dph ({self.bid_dph}) must be <= dph_max ({self.dph_max})")
        return self


class InterruptibleSpec(_Strict):
    """How an interruptible (bid) instance is run: read only with volt_instance.pricing interruptible."""

    bid_margin: float = Field(default=0.15, ge=0, le=5)  # bid_dph auto = min_bid x (1 + bid_margin)
    bid_max_dph: float | None = Field(default=None, gt=0)  # outbid: raise the bid up to this (default dph_max)
    run_again_wait_s: float = Field(default=900, gt=0)  # outbid: wait this long for it to run again, then migrate
    fallback: Literal["interruptible", "on-demand", "stop"] = "interruptible"  # what a migration rents
    gpu_hours_estimate: float = Field(default=400, gt=0)  # the whole curriculum (the guide: 300-500), for the plan


class ProvisionSpec(_Strict):
    running_timeout_s: float = Field(default=900, gt=0)
    ssh_timeout_s: float = Field(default=300, gt=0)
    poll_interval_s: float = Field(default=5, gt=0)
    build_estimate_min: float = Field(default=10, ge=0)


class WatchSpec(_Strict):
    backup_interval_min: float = Field(default=30, gt=0)
    poll_s: float = Field(default=60, gt=0)
    stall_min: float = Field(default=15, gt=0)
    ssh_dead_s: float = Field(default=600, gt=0)  # SSH failing this long: a warning every round, nothing rented
    ssh_replace_s: float = Field(default=7200, gt=0)  # ... this long, while the API still says running: replaced
    auto_recover: bool = True
    auto_finish: bool = True
    budget_usd: float | None = Field(default=None, gt=0)
    api_retries: int = Field(default=3, ge=1)
    api_retry_delay_s: float = Field(default=10, ge=0)


class Spec(BaseModel):
    """Only the volt_* keys Python needs; roles' own keys in the same file are ignored here."""

    model_config = ConfigDict(extra="ignore")

    campaign: str = Field(alias="volt_campaign", pattern=r"^[a-z0-9][a-z0-9-]{0,62}$")
    instance: InstanceSpec = Field(alias="volt_instance")
    provision: ProvisionSpec = Field(alias="volt_provision", default_factory=ProvisionSpec)
    watch: WatchSpec = Field(alias="volt_watch", default_factory=WatchSpec)
    interruptible: InterruptibleSpec = Field(alias="volt_interruptible", default_factory=InterruptibleSpec)

    @model_validator(mode="after")
    def _coherent(self) -> Spec:
        i, bid_max = self.instance, self.interruptible.bid_max_dph
        if self.watch.ssh_replace_s < self.watch.ssh_dead_s:
            raise ValueError(f"volt_watch.ssh_replace_s ({self.watch.ssh_replace_s:g}) must be >= ssh_dead_s ({self.watch.ssh_dead_s:g})")
        if i.pricing != "interruptible" or bid_max is None:
            return self
        if bid_max > i.dph_max:
            raise ValueError(f"volt_interruptible.bid_max_dph ({bid_max:g}) must be <= volt_instance.dph_max ({i.dph_max:g})")
        if i.bid_dph != "auto" and i.bid_dph is not None and bid_max < i.bid_dph:
            raise ValueError(f"volt_interruptible.bid_max_dph ({bid_max:g}) is below volt_instance.bid_dph ({i.bid_dph:g}): "
                             "raise it, or lower the bid")
        return self

    @property
    def bid_max(self) -> float:
        """The most this campaign bids for an interruptible instance, in $/h."""
        return self.interruptible.bid_max_dph or self.instance.dph_max


def _describe(err: dict, data: dict) -> str:
    loc = [str(p) for p in err["loc"]]
    key = ".".join(loc) or "(top level)"
    value: object = data
    for part in err["loc"]:
        value = value.get(part, "<missing>") if isinstance(value, dict) else "<missing>"
    msg = err["msg"].removeprefix("Value error, ")
    if err["type"] == "missing":
        return f"{key} is missing: add it"
    if err["type"] == "extra_forbidden":
        return f"{key} is not a known key: remove it or fix its spelling"
    if err["type"] == "literal_error":
        return f"{key} = {value!r}: {msg}"
    if not loc and err["type"].startswith("value_error"):  # a check across sections: its message names the keys
        return msg
    if loc and err["type"].startswith("value_error") and len(loc) == 1:
        return f"{key}: {msg}"
    return f"{key} = {value!r}: {msg}"


# Every top-level volt_* key some part of volt-ansible reads; any other volt_* key is a typo.
KNOWN_TOP = ("volt_campaign", "volt_instance", "volt_provision", "volt_watch", "volt_interruptible", "volt_phase03", "volt_curriculum",
             "volt_data")
SECTIONS = {"volt_instance": InstanceSpec, "volt_provision": ProvisionSpec, "volt_watch": WatchSpec, "volt_interruptible": InterruptibleSpec}


def _unknown(where: str, key: object, known: list[str]) -> str:
    close = difflib.get_close_matches(str(key), known, n=1)
    if close:
        return f"unknown key `{where}{key}` (did you mean `{close[0]}`?)"
    return f"unknown key `{where}{key}`: remove it or fix its spelling (known: {', '.join(known)})"


def unknown_keys(data: dict) -> str | None:
    """The first unknown key of the sections Python knows (top-level volt_*, volt_instance, volt_provision, volt_watch)."""
    for key in data:
        if str(key).startswith("volt_") and key not in KNOWN_TOP:
            return _unknown("", key, list(KNOWN_TOP))
    for section, model in SECTIONS.items():
        if isinstance(data.get(section), dict):
            fields = list(model.model_fields)
            for key in data[section]:
                if key not in fields:
                    return _unknown(section + ".", key, fields)
    return None


# --- the training jobs' numeric flags (volt_phase03 / volt_curriculum `numeric_flags`) ------------------------------
# What the binaries' parsers accept (Rust's FromStr for u64/i64/f64): a value they cannot parse panics after renting.
NUMERIC = {
    "uint": (re.compile(r"\+?[0-9]+"), "a whole number >= 0 (e.g. 10)"),
    "int": (re.compile(r"[+-]?[0-9]+"), "a whole number (e.g. 10)"),
    "float": (re.compile(r"[+-]?(?:inf|infinity|nan|(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?)", re.IGNORECASE),
              "a number (e.g. 1e-4 or 0.0001)"),
}


def _numeric_flags(table: dict, where: str) -> dict[str, str]:
    flags = table.get("numeric_flags") or {}
    if not isinstance(flags, dict):
        raise VoltError(f"{where}.numeric_flags = {flags!r}: must be a mapping of flag: {' | '.join(NUMERIC)} (e.g. --epochs: uint)")
    for flag, kind in flags.items():
        if kind not in NUMERIC:
            raise VoltError(f"{where}.numeric_flags.{flag} = {kind!r}: use one of {', '.join(NUMERIC)}")
    return {str(k): str(v) for k, v in flags.items()}


def _check_value(job: str, flag: str, value: object, kind: str, where: str) -> None:
    pattern, says = NUMERIC[kind]
    values = value if isinstance(value, list) else [value]
    for v in values:
        if v is None or v is False:
            continue
        ok = v is not True and not isinstance(v, dict | list) and bool(pattern.fullmatch(str(v)))
        if ok and kind != "float":
            ok = -(2**63) <= int(str(v)) < 2**64
        if not ok:
            shown = "true (the flag alone)" if v is True else repr(v)
            raise VoltError(f"job {job}: {flag} = {shown} is not {kind} ({says}), the binary cannot parse it: fix {where}.{flag}")


def check_jobs(data: dict) -> None:
    """Every value of a flag listed in numeric_flags parses as the binary's type (before anything is rented)."""
    p03, cur = data.get("volt_phase03"), data.get("volt_curriculum")
    if isinstance(p03, dict) and isinstance(p03.get("args"), dict):
        flags = _numeric_flags(p03, "volt_phase03")
        for flag, kind in flags.items():
            if flag in p03["args"]:
                _check_value(str(p03.get("name", "phase03")), flag, p03["args"][flag], kind, "volt_phase03.args")
    if isinstance(cur, dict):
        flags = _numeric_flags(cur, "volt_curriculum")
        common = cur.get("args") if isinstance(cur.get("args"), dict) else {}
        for i, st in enumerate(cur.get("stages") or []):
            if not isinstance(st, dict):
                continue
            own = st.get("args") if isinstance(st.get("args"), dict) else {}
            for flag, kind in flags.items():
                if flag in own:
                    _check_value(str(st.get("name", f"stage{i + 1}")), flag, own[flag], kind, f"volt_curriculum.stages[{i}].args")
                elif flag in common:
                    _check_value(str(st.get("name", f"stage{i + 1}")), flag, common[flag], kind, "volt_curriculum.args")


def parse(data: dict, source: str = str(SPEC_FILE)) -> Spec:
    """The validated spec, or one line: unknown keys first (with the likely intended key), then missing or bad values."""
    if problem := unknown_keys(data):
        raise VoltError(f"{source}: {problem}")
    try:
        spec = Spec.model_validate(data)
    except ValidationError as e:
        raise VoltError(f"{source}: {_describe(e.errors()[0], data)}") from None
    try:
        check_jobs(data)
    except VoltError as e:
        raise VoltError(f"{source}: {e}") from None
    return spec


def read(path: Path = SPEC_FILE) -> dict:
    """group_vars/all.yml as a plain mapping, or a one-line error: the one reader of the campaign file."""
    if not path.exists():
        raise VoltError(f"{path} not found: run volt-ansible from the project root (where group_vars/ is)")
    try:
        data = yamlio.load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise VoltError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise VoltError(f"{path} must be a mapping of keys to values")
    return data


def load(path: Path = SPEC_FILE) -> Spec:
    return parse(read(path), str(path))
