#!/usr/bin/env bash
# Regenerate constraints.txt: the exact version of every package .venv resolved, i.e. the set the tests passed with.
# scripts/setup.sh installs with `-c constraints.txt`, so a fresh machine gets this set and not whatever PyPI has today.
# Run it after changing the dependencies in pyproject.toml (and a green scripts/test.sh), then commit constraints.txt.
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/pip ] || { echo "constraints: no .venv here: run scripts/setup.sh first" >&2; exit 1; }
out=$(mktemp constraints.txt.XXXXXX)
trap 'rm -f "$out"' EXIT
{
  echo "# Exact versions the tests passed with: made by scripts/constraints.sh (pip freeze --exclude-editable of .venv)."
  echo "# Used by scripts/setup.sh: pip install -c constraints.txt -e '.[dev]'. Do not edit by hand."
  .venv/bin/pip freeze --exclude-editable --disable-pip-version-check
} > "$out"
chmod 0644 "$out"
mv "$out" constraints.txt
trap - EXIT
echo "constraints: wrote constraints.txt ($(grep -vc '^#' constraints.txt) packages)"
