"""lookup('repo_build_commit', url, version): the commit `version` names in the git repository at `url`, resolved on
the controller (git ls-remote), so the build key never takes a rented host's word for it. A full 40-hex SHA is
taken as is; a branch wins over a tag of the same name (as `git clone --branch` does); an annotated tag resolves to
the commit it points at. Anything else fails with one line."""

from __future__ import annotations

import os
import re
import subprocess

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase

SHA = re.compile(r"^[0-9a-f]{40}$")


def resolve(url: str, version: str, timeout: float = 60) -> str:
    if SHA.match(version):
        return version
    # a branch first, then an annotated tag's commit, then a lightweight tag (ls-remote prints a peeled tag only when
    # asked for it by name)
    wanted = [version] if version == "HEAD" or version.startswith("refs/") else \
        [f"refs/heads/{version}", f"refs/tags/{version}^{{}}", f"refs/tags/{version}"]
    try:
        proc = subprocess.run(["git", "ls-remote", "--", url, *wanted], capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, "GIT_TERMINAL_PROMPT": "0", "LC_ALL": "C"}, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise AnsibleError(f"repo_build: the controller cannot resolve {version!r} in {url} (git ls-remote: {e})") from None
    if proc.returncode != 0:
        why = (proc.stderr.strip().splitlines() or [f"exit {proc.returncode}"])[-1]
        raise AnsibleError(f"repo_build: the controller cannot resolve {version!r} in {url} (git ls-remote: {why}); "
                           "set repo_build_repo_controller to a URL the controller can read, or repo_build_version to a full SHA")
    found = {}
    for line in proc.stdout.splitlines():
        sha, _, ref = line.partition("\t")
        found[ref.strip()] = sha.strip()
    for ref in wanted:
        if SHA.match(found.get(ref, "")):
            return found[ref]
    raise AnsibleError(f"repo_build: {url} has no branch or tag {version!r} (git ls-remote on the controller); "
                       "set repo_build_version to a branch, a tag or a full 40-hex commit SHA")


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        if len(terms) != 2:
            raise AnsibleError("repo_build_commit takes (url, version)")
        return [resolve(str(terms[0]), str(terms[1]).strip())]
