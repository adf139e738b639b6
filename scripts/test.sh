#!/usr/bin/env bash
# Every test: lint, unit and integration tests (real SSH into podman test hosts), molecule scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
echo "test.sh: set up in ${SECONDS} s"
source .venv/bin/activate
export CONTAINERS_CONF="$PWD/volt_ansible/local/containers.conf"

# What every worker needs, made once before they start (while the linters run): the other test-host images and the
# packed Rust toolchain. Workers would wait for them on a lock anyway; this way neither waits.
python -m volt_ansible.local.image bare dev >/dev/null &
images=$!
python -m volt_ansible.local.toolchain >/dev/null &
rust=$!

ruff check .
yamllint -s .
ansible-lint --offline -q
wait "$images"
wait "$rust"
echo "test.sh: linted, images and toolchain ready at ${SECONDS} s"
# 2 workers (VOLT_TEST_WORKERS): tests that share a module's host stay on one (xdist groups), the slowest start first;
# kinds, timeouts and groups come from tests/schedule.py. Exits 5 (a failure here) when no test ran.
python -m pytest -q --durations=25 -n "${VOLT_TEST_WORKERS:-2}" --dist loadgroup "$@"
