"""A validated view of group_vars/all.yml, the campaign spec Ansible reads too."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

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
    bid_dph: float | None = Field(default=None, gt=0)

    @model_validator(mode="after")
    def _coherent(self) -> InstanceSpec:
        if self.disk_gb < self.disk_gb_min:
            raise ValueError(f"disk_gb ({self.disk_gb}) must be >= disk_gb_min ({self.disk_gb_min})")
        if self.pricing == "interruptible":
            if self.bid_dph is None:
                raise ValueError("pricing interruptible needs bid_dph (your bid in $/h)")
            if self.bid_dph > self.dph_max:
                raise ValueError(f"bid_dph ({self.bid_dph}) must be <= dph_max ({self.dph_max})")
        return self


class ProvisionSpec(_Strict):
    running_timeout_s: float = Field(default=900, gt=0)
    ssh_timeout_s: float = Field(default=300, gt=0)
    poll_interval_s: float = Field(default=5, gt=0)
    build_estimate_min: float = Field(default=10, ge=0)


class WatchSpec(_Strict):
    backup_interval_min: float = Field(default=30, gt=0)
    poll_s: float = Field(default=60, gt=0)
    ssh_dead_s: float = Field(default=600, gt=0)
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
    if loc and err["type"].startswith("value_error") and len(loc) == 1:
        return f"{key}: {msg}"
    return f"{key} = {value!r}: {msg}"


def parse(data: dict, source: str = str(SPEC_FILE)) -> Spec:
    try:
        return Spec.model_validate(data)
    except ValidationError as e:
        raise VoltError(f"{source}: {_describe(e.errors()[0], data)}") from None


def read(path: Path = SPEC_FILE) -> dict:
    """group_vars/all.yml as a plain mapping, or a one-line error: the one reader of the campaign file."""
    if not path.exists():
        raise VoltError(f"{path} not found: run volt-ansible from the project root (where group_vars/ is)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise VoltError(f"{path} is not valid YAML: {str(e).splitlines()[0]}") from None
    if not isinstance(data, dict):
        raise VoltError(f"{path} must be a mapping of keys to values")
    return data


def load(path: Path = SPEC_FILE) -> Spec:
    return parse(read(path), str(path))
