import json
import os

import pytest

from volt_ansible import state
from volt_ansible.errors import VoltError


@pytest.fixture(autouse=True)
def volt_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLT_DIR", str(tmp_path / ".volt"))
    return tmp_path / ".volt"


def sample() -> state.State:
    s = state.State(campaign="c")
    s.instance = state.Instance(id=7, offer_id=1, backend="local", ssh_host="127.0.0.1", ssh_port=2222, dph_total=0.2)
    s.ledger.append(state.LedgerEntry(instance_id=7, backend="local", dph_total=0.2, started_at=1000.0))
    return s


def test_round_trip_and_private_dir(volt_dir):
    state.save(sample())
    assert state.load() == sample().model_copy(update={"instance": state.load().instance})
    assert state.load().instance.ssh_port == 2222
    assert oct(volt_dir.stat().st_mode & 0o777) == "0o700"


def test_missing_file_is_empty_state():
    assert state.load() == state.State()


def test_crash_during_write_keeps_the_old_file(volt_dir, monkeypatch):
    state.save(sample())
    before = (volt_dir / "state.json").read_bytes()
    s = sample()
    s.campaign = "changed"

    def boom(*a, **k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        state.save(s)
    assert (volt_dir / "state.json").read_bytes() == before
    assert [p.name for p in volt_dir.iterdir()] == ["state.json"]  # no temp file left behind


@pytest.mark.parametrize("content", ["{not json", json.dumps({"instance": {"id": "x"}}), "\xff\xfe"])
def test_corrupt_file_is_refused_and_left_untouched(volt_dir, content):
    volt_dir.mkdir()
    (volt_dir / "state.json").write_text(content, errors="surrogateescape")
    before = (volt_dir / "state.json").read_bytes()
    with pytest.raises(VoltError, match=r"state.json is corrupt .*left untouched.*move the file aside"):
        state.load()
    assert (volt_dir / "state.json").read_bytes() == before


def test_ledger_cost():
    e = state.LedgerEntry(instance_id=1, backend="vast", dph_total=0.2, started_at=0.0, ended_at=1800.0)
    assert e.cost() == pytest.approx(0.1)
