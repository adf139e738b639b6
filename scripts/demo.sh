#!/usr/bin/env bash
# The main job on the embedded local default (Vast API double + a podman container as the instance,
# the Volt-X fixture, small generated data): one command runs the whole campaign. `up` checks the
# data, rents, builds + checks CUDA + sends the data in parallel, starts each job as soon as it can;
# `--watch` then backs up, and once every output is home and verified destroys the instance.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
export CONTAINERS_CONF="$PWD/volt_ansible/local/containers.conf"

# never leave an instance behind if something below fails (a demo: losing its outputs is fine)
trap 'volt-ansible destroy --yes --force >/dev/null 2>&1 || true' EXIT
volt-ansible up --backend local --yes --watch
ls runs/volt-x-phase21/checkpoints    # the trained fixture outputs, home and verified (home.json)
