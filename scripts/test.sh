#!/usr/bin/env bash
# Every test: lint, unit and integration tests (real SSH into podman test hosts), molecule scenarios.
set -euo pipefail
cd "$(dirname "$0")/.."
# What every worker needs, made once before they start: the three test-host images (two debootstraps: dev is host's
# rootfs plus a C toolchain) and the packed Rust toolchain. Both are stdlib-only Python, so they start right after the
# system packages, while pip fills .venv and the linters run; workers would wait for them on a lock anyway, this way
# nothing waits.
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

ruff check .
yamllint -s .
ansible-lint --offline -q
echo "test.sh: linted at ${SECONDS} s"
wait "$images"
wait "$rust"
echo "test.sh: images and toolchain ready at ${SECONDS} s"
# 3 workers on 2 cores (VOLT_TEST_WORKERS; the tests wait on ssh over an 80 ms link, apt, sleeps and containers, so a
# third keeps the CPUs busy: 1155 s against 1200 s with 4; unit tests first while the images are made, 1321 s: the
# workers' prefetched units queue behind tests waiting for the images): tests that share a module's host stay on one (xdist
# groups; xdist's loadscope reorder starts the groups with the most tests first), then the slowest first;
# kinds, timeouts and groups come from tests/schedule.py. Exits 5 (a failure here) when no test ran.
python -m pytest -q --durations=25 -n "${VOLT_TEST_WORKERS:-3}" --dist loadgroup "$@"
