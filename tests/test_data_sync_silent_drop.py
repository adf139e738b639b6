"""data_sync under a silent drop (the link loses everything for a while: no RST, nothing arrives), and the adaptive
compression decision (volt_ansible/datasync/compress.py)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import threading
import time
from pathlib import Path

import pytest
from test_data_sync import make_data, play  # its role play and the data generator

from volt_ansible.datasync import compress
from volt_ansible.local import link

MB = 1e6


# ----------------------------------------------------------------------------------------------
# the decision (pure)

SPEEDS = [compress.LevelSpeed(1, 180 * MB, 4.5), compress.LevelSpeed(3, 120 * MB, 4.9), compress.LevelSpeed(6, 60 * MB, 5.5)]


def test_a_slow_link_gets_the_best_ratio_a_fast_one_the_fastest_level_and_a_faster_one_none():
    slow = compress.decide(6 * MB, SPEEDS)  # 50 Mbit: the link is the limit, the ratio is what counts
    assert slow.level == 6 and slow.predicted_Bps == pytest.approx(6 * MB * 5.5) and "bound by the link" in slow.why
    mid = compress.decide(24 * MB, SPEEDS)  # 200 Mbit: zstd-6 is cut to its 60 MB/s; 1 and 3 are within 10 %: the cheaper
    assert mid.level == 1 and mid.predicted_Bps == pytest.approx(24 * MB * 4.5)
    fast = compress.decide(117 * MB, SPEEDS)  # gigabit: the cores are the limit
    assert fast.level == 1 and fast.predicted_Bps == pytest.approx(180 * MB) and "bound by the cores" in fast.why
    faster = compress.decide(400 * MB, SPEEDS)  # a link faster than any level compresses: raw
    assert faster.level is None and faster.predicted_Bps == 400 * MB and "no level is 1.10x faster" in faster.why
    edge = compress.decide(170 * MB, SPEEDS)  # 180 MB/s compressed is not 1.1x a 170 MB/s link: raw
    assert edge.level is None


def test_the_decision_is_one_line_and_falls_back_when_a_probe_failed():
    d = compress.decide(6 * MB, SPEEDS)
    line = d.line("python_sample")
    assert "\n" not in line and line.startswith("compression for python_sample: zstd-6 (predicted 33.0 MB/s of data; link 6.0 MB/s raw; ")
    assert "zstd-1 180 MB/s x4.50" in line and json.loads(json.dumps(d.as_dict()))["level"] == 6
    assert compress.decide(0.0, SPEEDS).level == 6  # no link figure: the best ratio
    assert compress.decide(6 * MB, []).level is None


def test_the_level_probe_measures_this_controllers_rsync_on_a_sample(tmp_path: Path):
    jsonl, raw = tmp_path / "a.jsonl", tmp_path / "b.safetensors"
    make_data.write_jsonl(jsonl, 6_000_000)
    make_data.write_safetensors(raw, 3_000_000, seed=3)
    speeds = {s.level: s for s in compress.probe_levels(str(jsonl), str(tmp_path / "w"), levels=(1, 6), sample_bytes=4 << 20)}
    assert sorted(speeds) == [1, 6]
    assert speeds[6].ratio > speeds[1].ratio > 2.5  # code JSONL compresses, better at a higher level
    assert all(s.rate > 1 * MB for s in speeds.values())
    (flat,) = compress.probe_levels(str(raw), str(tmp_path / "w"), levels=(1,), sample_bytes=4 << 20)
    assert flat.ratio < 1.01  # incompressible
    assert not (tmp_path / "w" / "probe").exists()  # the sample and the copies are gone


# ----------------------------------------------------------------------------------------------
# a silent drop, end to end

PLAY = play(data_sync_keepalive_s=2, data_sync_keepalive_count=2, data_sync_io_timeout_s=6, data_sync_compression="fixed",
            data_sync_disk_margin_gb=0)  # test_data_sync's role play (poll and retry delay 1 s)
NOTICE_S = 6  # the play's rsync --timeout; ssh's keepalive (2 s x 2) may notice first
CUT_S = 12


@pytest.mark.podman
def test_a_silent_drop_is_noticed_and_the_transfer_resumes_from_its_partial_file(make_host, tmp_path: Path):
    """The link to the instance goes silent mid-file (the relay in its SSH path stops forwarding, closes nothing) on the
    compressed path; the driver notices within the configured time while the link is still cut, retries, and once the
    link is back resumes from the partial file: the file arrives verified, and little is sent twice."""
    host = make_host()
    volt_dir = tmp_path / "volt"
    host.env["VOLT_DIR"] = str(volt_dir)
    src = tmp_path / "data" / "corpus.jsonl"
    make_data.write_jsonl(src, 24_000_000)
    size = src.stat().st_size
    veth = link.Veth(host.name)
    port, pid = link.start_relay(tmp_path, host.name, veth.ip, 20)
    far = dataclasses.replace(host, port=port)  # the play reaches the instance through the relay
    vd = {"root_remote": "/root/volt-x", "local_root": str(src.parent),
          "items": [{"name": "corpus", "src": src.name, "dest": "data/corpus.jsonl", "kind": "file", "jobs": ["stage1"]}]}
    try:
        veth.shape(link.Model(rate_mbit=8))  # ~5 MB of zstd on the wire: ~5 s
        b0 = veth.tx_bytes()
        result = {}
        play = threading.Thread(target=lambda: result.update(proc=far.playbook(PLAY, extravars={"volt_data": vd})))
        play.start()
        landed, deadline = 0, time.time() + 90
        while landed < size * 0.35 and time.time() < deadline:
            out = host.exec("stat -c %s /root/volt-x/data/.corpus.jsonl.* 2>/dev/null || echo 0", check=False).stdout.split()
            landed = int(out[0]) if out else 0
            time.sleep(0.05)
        assert landed >= size * 0.35, "the transfer never got a third of the way"
        with link.cut_for(pid, CUT_S) as cut_at:
            cut_wall = time.time()
            time.sleep(0.5)
            landed = int(host.exec("stat -c %s /root/volt-x/data/.corpus.jsonl.* 2>/dev/null || echo 0", check=False).stdout.split()[0])
            time.sleep(CUT_S - (time.monotonic() - cut_at))
        play.join(120)
        wire = veth.tx_bytes() - b0
    finally:
        link.stop_relay(pid)
        veth.unshape()
    proc = result["proc"]
    assert proc.returncode == 0, proc.stdout[-4000:]
    st = json.loads((volt_dir / "data-sync" / f"{host.name}.json").read_text())
    item = st["items"]["corpus"]
    attempts = item["attempts"]
    assert item["state"] == "verified" and item["compression"] == "zstd-3", item
    assert attempts[0]["rc"] != 0 and attempts[-1]["rc"] == 0, attempts
    noticed = attempts[0]["ended"] - cut_wall
    assert 2 <= noticed <= NOTICE_S + 3, (noticed, attempts)  # by the keepalive or --timeout, while the link was still cut
    assert noticed < CUT_S
    last = attempts[-1]
    assert last["matched"] >= landed * 0.9, (landed, last)  # what had landed before the cut was kept
    assert last["literal"] <= size - landed + 0.02 * size, (landed, last)  # and only the rest sent again
    assert wire < 0.5 * size  # still compressed: zstd on both attempts
    remote = host.exec("sha256sum /root/volt-x/data/corpus.jsonl").stdout.split()[0]
    assert remote == hashlib.sha256(src.read_bytes()).hexdigest()
    assert host.exec("ls -A /root/volt-x/data").stdout.split() == ["corpus.jsonl"]  # no partial left
