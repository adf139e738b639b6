#!/usr/bin/env bash
# Every test: lint, unit and integration tests (real SSH into podman test hosts), molecule scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
export CONTAINERS_CONF="$PWD/volt_ansible/local/containers.conf"

ruff check .
yamllint -s .
ansible-lint --offline -q
python -m pytest -q --durations=25 "$@"   # exits 5 (a failure here) when no test ran
