#!/usr/bin/env bash
# Every test: lint, unit and integration tests (real SSH into podman test hosts), molecule scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
# What every worker needs, made once before they start: the three test-host images (two debootstraps: dev is host's
# rootfs plus a C toolchain) and the packed Rust toolchain. Both are stdlib-only Python, so they start right after the
# system packages, while pip fills .venv, the linters run and the unit tests start; the podman tests wait for them on
# their locks.
bash scripts/setup.sh packages
export CONTAINERS_CONF="$PWD/volt_ansible/local/containers.conf"
setsid python3 -m volt_ansible.local.image host bare dev >/dev/null &
images=$!
setsid python3 -m volt_ansible.local.toolchain >/dev/null &
rust=$!
trap 'kill -- -"$images" -"$rust" 2>/dev/null || true' EXIT  # a failed pip or linter must not leave them running
bash scripts/setup.sh venv
source .venv/bin/activate
echo "test.sh: set up in ${SECONDS} s"

# The linters run beside the tests and report at the end; the unit tests go first (tests/schedule.py): neither needs the
# images or the toolchain, still being made, which the podman tests wait for on their locks.
lint_log=$(mktemp)
( ruff check . && yamllint -s . && ansible-lint --offline -q ) > "$lint_log" 2>&1 &
lint=$!
# 3 workers on 2 cores (VOLT_TEST_WORKERS; the tests wait on ssh over an 80 ms link, apt, sleeps and containers, so a
# third keeps the CPUs busy: 1155 s against 1200 s with 4): tests that share a module's host stay on one (xdist
# groups), the slowest start first;
# kinds, timeouts, groups and that order come from tests/schedule.py (--no-loadscope-reorder: else xdist puts the groups
# with the most tests first). Exits 5 (a failure here) when no test ran.
rc=0
python -m pytest -q --durations=25 -n "${VOLT_TEST_WORKERS:-3}" --dist loadgroup --no-loadscope-reorder "$@" || rc=$?
lint_rc=0
wait "$lint" || lint_rc=$?
cat "$lint_log"; rm -f "$lint_log"
[ "$lint_rc" -eq 0 ] || echo "test.sh: the linters failed (exit $lint_rc)"
wait "$images" || { echo "test.sh: making the test-host images failed"; rc=1; }
wait "$rust" || { echo "test.sh: packing the Rust toolchain failed"; rc=1; }
echo "test.sh: done at ${SECONDS} s"
exit $((rc ? rc : lint_rc))
