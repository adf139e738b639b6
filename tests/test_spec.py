import copy

import pytest
import yaml
from conftest import REPO

from volt_ansible import spec
from volt_ansible.errors import VoltError

DEFAULTS = yaml.safe_load((REPO / "group_vars/all.yml").read_text())


def with_instance(**changes):
    data = copy.deepcopy(DEFAULTS)
    data["volt_instance"].update(changes)
    return data


def test_shipped_spec_holds_the_guides_defaults():
    s = spec.load(REPO / "group_vars/all.yml")
    i = s.instance
    assert (i.gpu_name, i.num_gpus, i.cpu_cores_min, i.cpu_ram_gb_min, i.disk_gb_min) == ("RTX 5090", 1, 128, 64, 250)
    assert (i.cuda_min, i.dph_max, i.reliability_min, i.pricing) == (12.8, 0.20, 0.95, "on-demand")
    assert i.image == "nvidia/cuda:12.8.0-devel-ubuntu22.04"


@pytest.mark.parametrize(
    ("changes", "expected"),
    [
        ({"cpu_cores_min": 0}, "volt_instance.cpu_cores_min = 0: Input should be greater than or equal to 1"),
        ({"reliability_min": 1.5}, "volt_instance.reliability_min = 1.5: Input should be less than or equal to 1"),
        ({"pricing": "spot"}, "volt_instance.pricing = 'spot': Input should be 'on-demand' or 'interruptible'"),
        ({"dph_max": "cheap"}, "volt_instance.dph_max = 'cheap': Input should be a valid number"),
        ({"pricing": "interruptible"}, "volt_instance: pricing interruptible needs bid_dph"),
        ({"pricing": "interruptible", "bid_dph": 0.5}, "volt_instance: bid_dph (0.5) must be <= dph_max (0.2)"),
        ({"disk_gb": 100}, "volt_instance: disk_gb (100.0) must be >= disk_gb_min (250.0)"),
        ({"gpu": "RTX 5090"}, "unknown key `volt_instance.gpu`: remove it or fix its spelling (known: gpu_name, num_gpus,"),
        ({"cuda_minimum": 12.8}, "unknown key `volt_instance.cuda_minimum` (did you mean `cuda_min`?)"),
    ],
)
def test_bad_values_name_key_value_and_what_is_allowed(changes, expected):
    with pytest.raises(VoltError) as e:
        spec.parse(with_instance(**changes), "all.yml")
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("all.yml: " + expected), msg


def test_missing_section_and_bad_campaign_name():
    data = copy.deepcopy(DEFAULTS)
    del data["volt_instance"]
    with pytest.raises(VoltError, match=r"volt_instance is missing: add it"):
        spec.parse(data)
    data = copy.deepcopy(DEFAULTS)
    data["volt_campaign"] = "Bad Name!"
    with pytest.raises(VoltError, match=r"volt_campaign = 'Bad Name!': String should match pattern"):
        spec.parse(data)


def test_interruptible_with_bid_is_valid():
    s = spec.parse(with_instance(pricing="interruptible", bid_dph=0.1))
    assert s.instance.bid_dph == 0.1


def test_unreadable_yaml_is_one_line(tmp_path):
    p = tmp_path / "all.yml"
    p.write_text("volt_instance: [unclosed\n")
    with pytest.raises(VoltError, match=r"is not valid YAML"):
        spec.load(p)
    with pytest.raises(VoltError, match=r"not found: run volt-ansible from the project root"):
        spec.load(tmp_path / "nope.yml")
