#!/usr/bin/env bash
# The main job on the embedded local default: rent (Vast API double + podman instance),
# reach it with Ansible over SSH, destroy it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
export CONTAINERS_CONF="$PWD/volt_ansible/local/containers.conf"

volt-ansible provision --backend local
trap 'volt-ansible destroy --yes' EXIT   # never leave an instance behind, whatever fails below
volt-ansible status
volt-ansible run ping
ansible-playbook playbooks/ping.yml
