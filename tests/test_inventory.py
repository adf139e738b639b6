import json
import shlex
import subprocess

from conftest import REPO

from volt_ansible import inventory, ssh, state


def test_empty_without_state(tmp_path):
    inv = inventory.build(tmp_path)
    assert inv["volt"]["hosts"] == [] and inv["_meta"]["hostvars"] == {}


def test_host_pinned_to_campaign_key_and_known_hosts(tmp_path, monkeypatch):
    monkeypatch.setenv("VOLT_DIR", str(tmp_path))
    s = state.State(campaign="c", instance=state.Instance(id=42, offer_id=1, backend="vast", ssh_host="ssh5.vast.ai", ssh_port=12345))
    state.save(s)
    inv = inventory.build(tmp_path)
    assert inv["volt"]["hosts"] == ["volt-42"]
    hv = inv["_meta"]["hostvars"]["volt-42"]
    assert (hv["ansible_host"], hv["ansible_port"], hv["ansible_user"]) == ("ssh5.vast.ai", 12345, "root")
    assert hv["ansible_ssh_private_key_file"] == str(tmp_path / "id_ed25519")
    assert f"UserKnownHostsFile={tmp_path / 'known_hosts'}" in hv["ansible_ssh_common_args"]
    assert "StrictHostKeyChecking=yes" in hv["ansible_ssh_common_args"]


def test_a_project_path_with_a_space_stays_one_ssh_argument(tmp_path, monkeypatch):
    """Ansible splits ansible_ssh_common_args like a shell: the pinned known_hosts path must survive it whole."""
    vd = tmp_path / "my campaign" / ".volt"
    vd.mkdir(parents=True)
    monkeypatch.setenv("VOLT_DIR", str(vd))
    state.save(state.State(campaign="c", instance=state.Instance(id=7, offer_id=1, backend="vast", ssh_host="ssh5.vast.ai", ssh_port=2)))
    args = shlex.split(inventory.build(vd)["_meta"]["hostvars"]["volt-7"]["ansible_ssh_common_args"])
    assert f"UserKnownHostsFile={vd / 'known_hosts'}" in args and args == [*ssh.pinning(vd)]


def test_script_protocol_through_ansible_inventory(tmp_path):
    """The script under inventory/ as plain Ansible runs it (no venv needed for the script itself)."""
    vd = tmp_path / ".volt"
    vd.mkdir()
    (vd / "state.json").write_text(json.dumps({"instance": {"id": 9, "ssh_host": "127.0.0.1", "ssh_port": 2200, "backend": "local"}}))
    out = subprocess.run(
        ["/usr/bin/python3", str(REPO / "inventory/volt_state.py"), "--list"], env={"VOLT_DIR": str(vd)}, capture_output=True, text=True, check=True
    ).stdout
    assert json.loads(out)["volt"]["hosts"] == ["volt-9"]
    host = subprocess.run(
        ["/usr/bin/python3", str(REPO / "inventory/volt_state.py"), "--host", "volt-9"],
        env={"VOLT_DIR": str(vd)},
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(host)["ansible_port"] == 2200


def test_instance_without_ssh_yet_is_not_a_host(tmp_path):
    (tmp_path / "state.json").write_text(json.dumps({"instance": {"id": 9, "ssh_port": 0}}))
    assert inventory.build(tmp_path)["volt"]["hosts"] == []
