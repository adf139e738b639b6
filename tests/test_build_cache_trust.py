"""The build cache's trust (issue 13 part 2), on the controller only: the commit the controller resolves itself
(roles/repo_build/lookup_plugins/repo_build_commit.py), the entry's record and its check before a restore
(volt_ansible/buildcache.py), and `volt-ansible cache list|clear`. The role on test hosts: tests/test_repo_build.py."""

from __future__ import annotations

import importlib.util
import io
import subprocess
import tarfile
from pathlib import Path

import pytest
from conftest import REPO

from volt_ansible import buildcache
from volt_ansible.errors import VoltError

spec = importlib.util.spec_from_file_location("repo_build_commit", REPO / "roles/repo_build/lookup_plugins/repo_build_commit.py")
commit_lookup = importlib.util.module_from_spec(spec)
spec.loader.exec_module(commit_lookup)

KEY = "ab" * 32
FILES = {"target/release/train-vfn": b"\x7fELF train", "target/release/codebook-init": b"\x7fELF init",
         "target/release/.volt-build-stamp": KEY.encode() + b"\n"}
INFO = {"commit": "c" * 40, "repo": "https://example.invalid/volt-x.git", "version": "main",
        "built_by": {"host": "volt-123", "instance_id": 123, "machine": "", "hostname": "c0ffee", "machine_id": "m1"}}


def git(*args: str, cwd: Path | None = None) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


# --- the commit, resolved by the controller ---------------------------------------------------------------


@pytest.fixture
def remote(tmp_path):
    """A repository with main, a branch, a lightweight and an annotated tag, each on its own commit."""
    work = tmp_path / "work"
    work.mkdir()
    git("init", "-q", "-b", "main", cwd=work)
    shas = {}
    for name in ("first", "second", "third", "fourth"):
        (work / "f").write_text(name)
        git("add", "f", cwd=work)
        git("commit", "-qm", name, cwd=work)
        shas[name] = git("rev-parse", "HEAD", cwd=work)
    git("branch", "feature", shas["first"], cwd=work)
    git("tag", "light", shas["second"], cwd=work)
    git("tag", "-a", "-m", "annotated", "v1", shas["third"], cwd=work)
    return work.as_uri(), shas


def test_a_branch_or_tag_resolves_to_the_commit_ls_remote_names(remote):
    url, shas = remote
    assert commit_lookup.resolve(url, "main") == shas["fourth"]
    assert commit_lookup.resolve(url, "feature") == shas["first"]
    assert commit_lookup.resolve(url, "light") == shas["second"]
    assert commit_lookup.resolve(url, "v1") == shas["third"]  # the commit, not the annotated tag object


def test_a_full_sha_is_taken_as_is_without_asking_git():
    sha = "0123456789abcdef0123456789abcdef01234567"
    assert commit_lookup.resolve("file:///nowhere/at/all.git", sha) == sha


def test_what_the_controller_cannot_resolve_fails_with_one_line(remote, tmp_path):
    from ansible.errors import AnsibleError

    url, _ = remote
    with pytest.raises(AnsibleError) as e:
        commit_lookup.resolve(url, "no-such-branch")
    assert str(e.value) == (f"repo_build: {url} has no branch or tag 'no-such-branch' (git ls-remote on the controller); "
                            "set repo_build_version to a branch, a tag or a full 40-hex commit SHA")
    with pytest.raises(AnsibleError) as e:
        commit_lookup.resolve(f"file://{tmp_path}/missing.git", "main")
    assert "\n" not in str(e.value) and str(e.value).startswith(f"repo_build: the controller cannot resolve 'main' in file://{tmp_path}/missing.git")
    assert "repo_build_repo_controller" in str(e.value)


# --- the entry's record, checked before a restore ---------------------------------------------------------


def pack(path: Path, files: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in files.items():
            ti = tarfile.TarInfo(name)
            ti.size, ti.mode = len(data), 0o755
            tar.addfile(ti, io.BytesIO(data))
    return path


def saved(cache: Path, files: dict[str, bytes] = FILES, key: str = KEY, info: dict = INFO) -> dict:
    cache.mkdir(parents=True, exist_ok=True)
    return buildcache.record(pack(cache / f"{key}.v3.tar.gz.part", files), cache, key, info)


def test_a_saved_entry_records_who_built_it_when_and_every_files_digest(tmp_path):
    import hashlib

    rec = saved(tmp_path / "c")
    assert rec["key"] == KEY and rec["commit"] == INFO["commit"] and rec["built_by"]["host"] == "volt-123" and rec["built_at"] > 0
    assert rec["files"] == {name: hashlib.sha256(data).hexdigest() for name, data in FILES.items()}
    assert sorted(p.name for p in (tmp_path / "c").iterdir()) == [f"{KEY}.v3.json", f"{KEY}.v3.tar.gz"]  # no .part left
    assert buildcache.verify(tmp_path / "c", KEY, INFO["commit"]) == (str(tmp_path / "c" / f"{KEY}.v3.tar.gz"), "")


@pytest.mark.parametrize("change, reason", [
    ({"target/release/train-vfn": b"\x7fELF planted"}, "target/release/train-vfn in {name} has sha256 "),
    ({"target/release/extra": b"x"}, "{name} holds target/release/extra, which its record does not list"),
    ({"target/release/codebook-init": None}, "{name} lacks target/release/codebook-init, which its record lists"),
])
def test_an_entry_altered_after_it_was_saved_is_refused(tmp_path, change, reason):
    cache = tmp_path / "c"
    saved(cache)
    files = {k: v for k, v in {**FILES, **change}.items() if v is not None}
    pack(cache / f"{KEY}.v3.tar.gz", files)
    path, refused = buildcache.verify(cache, KEY, INFO["commit"])
    assert path == "" and refused.startswith(reason.format(name=f"{KEY}.v3.tar.gz")) and "\n" not in refused


def test_an_entry_for_another_commit_or_key_or_without_a_record_is_not_restored(tmp_path):
    cache = tmp_path / "c"
    saved(cache)
    assert buildcache.verify(cache, KEY, "d" * 40) == ("", f"it was recorded for commit {'c' * 40}, not {'d' * 40}")
    other = "cd" * 32
    (cache / f"{other}.v3.tar.gz").write_bytes((cache / f"{KEY}.v3.tar.gz").read_bytes())
    (cache / f"{other}.v3.json").write_text((cache / f"{KEY}.v3.json").read_text())  # copied under another key
    assert buildcache.verify(cache, other, INFO["commit"]) == ("", f"its record is for key {KEY[:12]}, not {other[:12]}")
    (cache / f"{KEY}.v3.json").unlink()  # an interrupted save: the archive without its record
    assert buildcache.verify(cache, KEY, INFO["commit"]) == ("", "")
    (cache / f"{other}.v3.json").write_text("{not json")
    assert buildcache.verify(cache, other, INFO["commit"])[1].startswith(f"its record {other}.v3.json is unreadable")


def test_an_archive_with_a_link_or_a_path_outside_is_not_taken(tmp_path):
    cache = tmp_path / "c"
    cache.mkdir()
    part = cache / "x.part"
    with tarfile.open(part, "w:gz") as tar:
        ti = tarfile.TarInfo("target/release/train-vfn")
        ti.type, ti.linkname = tarfile.SYMTYPE, "/root/.bashrc"
        tar.addfile(ti)
    with pytest.raises(VoltError, match="is not a plain file at a relative path"):
        buildcache.record(part, cache, KEY, INFO)
    assert not list(cache.glob("*.json"))


# --- volt-ansible cache list | clear ----------------------------------------------------------------------


def test_cache_list_and_clear(project):
    cache = project.home / ".cache" / "volt-ansible" / "builds"  # repo_build_cache_dir's default under this HOME
    assert "is empty" in project.cli("cache", "list").stdout
    saved(cache)
    second = "ef" * 32
    saved(cache, key=second, info={**INFO, "commit": "e" * 40, "built_by": {"host": "volt-456", "instance_id": 456}})
    (cache / ("12" * 32 + ".v2.tar.gz")).write_bytes(b"old")  # an entry of the previous format, without a record

    out = project.cli("cache", "list", COLUMNS="220").stdout
    assert KEY[:16] in out and second[:16] in out and "12" * 8 in out, out
    assert "volt-123 (instance 123, hostname c0ffee)" in out and "volt-456 (instance 456)" in out
    assert "c" * 12 in out and "e" * 12 in out and "0.0 MB" in out and "legacy entry without a record" in out
    assert "3 entries in" in out and "as trustworthy as the instance that built it" in out

    gone = project.cli("cache", "clear", KEY[:10]).stdout
    assert f"removed {KEY[:16]} (built by volt-123" in gone and "removed 1 entry" in gone
    assert not list(cache.glob(f"{KEY}*")) and list(cache.glob(f"{second}*"))
    missing = project.cli("cache", "clear", KEY[:10], check=False)
    assert missing.returncode == 1 and f"no entry '{KEY[:10]}'" in missing.stderr
    assert project.cli("cache", "clear", check=False).returncode == 1  # neither KEY nor --all: nothing is removed
    assert list(cache.glob(f"{second}*"))
    assert "removed 2 entries" in project.cli("cache", "clear", "--all").stdout
    assert list(cache.iterdir()) == []


def test_cache_commands_take_another_directory(project, tmp_path):
    cache = tmp_path / "elsewhere"
    saved(cache)
    assert KEY[:16] in project.cli("cache", "list", "--dir", str(cache), COLUMNS="220").stdout
    assert "removed 1 entry" in project.cli("cache", "clear", "--all", "--dir", str(cache)).stdout
    assert list(cache.iterdir()) == []
