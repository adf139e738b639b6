"""YAML in: yaml.safe_load, parsed by libyaml when PyYAML has it (the same document types, ~7x faster on
group_vars/all.yml, which a `watch` round reads about ten times). No other import, so Ansible's plugins can use it."""

from __future__ import annotations

import yaml

_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load(text: str):
    return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader: CSafeLoader, or SafeLoader without libyaml)
