#!/usr/bin/env bash
# The main job on the embedded local default: rent (Vast API double + podman instance),
# prepare it, send the data, train Phase 0.3 + the 3 stages, bring the outputs home, destroy it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
export CONTAINERS_CONF="$PWD/volt_ansible/local/containers.conf"

volt-ansible provision --backend local
# never leave an instance behind if something below fails (a demo: losing its outputs is fine)
trap 'volt-ansible destroy --yes --force 2>/dev/null || true' EXIT
volt-ansible status
volt-ansible run prepare          # toolchain + CUDA check + build of the Volt-X fixture
volt-ansible run sync             # the fixture's data, needed-first, verified
volt-ansible train --stage all    # Phase 0.3 + stages 1 -> 2 -> 3 in tmux
for _ in $(seq 120); do           # the fixture trains in seconds
  volt-ansible status | grep -Eq '^stage3 +done' && break
  sleep 2
done
volt-ansible status
volt-ansible run backup -e backup_stable_s=0   # outputs home, verified: runs/<campaign>/
ansible-playbook playbooks/ping.yml            # plain Ansible works from the project root too
volt-ansible finish                            # everything home and verified -> destroy, summary
