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
        ({"pricing": "interruptible", "bid_dph": "cheap"}, "volt_instance.bid_dph = 'cheap': use a price in $/h (e.g. 0.12) or auto"),
        ({"pricing": "interruptible", "bid_dph": 0}, "volt_instance: bid_dph (0.0) must be > 0"),
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
    assert s.bid_max == 0.2  # no bid_max_dph: dph_max
    s = spec.parse(with_instance(pricing="interruptible", bid_dph="auto") | {"volt_interruptible": {"bid_max_dph": 0.15}})
    assert (s.instance.bid_dph, s.bid_max, s.interruptible.bid_margin, s.interruptible.fallback) == ("auto", 0.15, 0.15, "interruptible")


@pytest.mark.parametrize(
    ("instance", "section", "expected"),
    [
        ({"bid_dph": 0.1}, {"bid_max_dph": 0.05}, "volt_interruptible.bid_max_dph (0.05) is below volt_instance.bid_dph (0.1): raise it"),
        ({"bid_dph": "auto"}, {"bid_max_dph": 0.5}, "volt_interruptible.bid_max_dph (0.5) must be <= volt_instance.dph_max (0.2)"),
        ({"bid_dph": 0.1}, {"fallback": "spot"}, "volt_interruptible.fallback = 'spot': Input should be 'interruptible', 'on-demand' or 'stop'"),
        ({"bid_dph": 0.1}, {"bid_max": 0.15}, "unknown key `volt_interruptible.bid_max` (did you mean `bid_max_dph`?)"),
        ({"bid_dph": 0.1}, {"bid_margin": -0.1}, "volt_interruptible.bid_margin = -0.1: Input should be greater than or equal to 0"),
    ],
)
def test_bad_bid_settings_are_one_line_before_renting(instance, section, expected):
    data = with_instance(pricing="interruptible", **instance) | {"volt_interruptible": section}
    with pytest.raises(VoltError) as e:
        spec.parse(data, "all.yml")
    assert "\n" not in str(e.value) and str(e.value).startswith("all.yml: " + expected), str(e.value)


def test_ssh_replace_s_below_ssh_dead_s_is_refused():
    data = copy.deepcopy(DEFAULTS)
    data["volt_watch"]["ssh_replace_s"] = 60
    with pytest.raises(VoltError, match=r"^all.yml: volt_watch.ssh_replace_s \(60\) must be >= ssh_dead_s \(600\)$"):
        spec.parse(data, "all.yml")


def test_unreadable_yaml_is_one_line(tmp_path):
    p = tmp_path / "all.yml"
    p.write_text("volt_instance: [unclosed\n")
    with pytest.raises(VoltError, match=r"is not valid YAML"):
        spec.load(p)
    with pytest.raises(VoltError, match=r"not found: run volt-ansible from the project root"):
        spec.load(tmp_path / "nope.yml")
