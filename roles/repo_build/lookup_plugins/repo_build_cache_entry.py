"""lookup('repo_build_cache_entry', cache_dir, key, commit) -> {path, refused}: the build-cache entry to restore
(path: its archive, checked on the controller against its record: exactly the recorded files, each with its
recorded sha256, for this key and commit), or no entry (path ""), or a refused one (refused: the one-line reason).
The format and the checks live in volt_ansible/buildcache.py (also behind `volt-ansible cache`)."""

from __future__ import annotations

from ansible.errors import AnsibleError
from ansible.plugins.lookup import LookupBase


class LookupModule(LookupBase):
    def run(self, terms, variables=None, **kwargs):
        try:
            from volt_ansible import buildcache
        except ImportError as e:
            raise AnsibleError(f"repo_build: the build cache needs the volt_ansible package on the controller ({e})") from None
        if len(terms) != 3:
            raise AnsibleError("repo_build_cache_entry takes (cache_dir, key, commit)")
        path, refused = buildcache.verify(str(terms[0]), str(terms[1]), str(terms[2]))
        return [{"path": path, "refused": refused}]
