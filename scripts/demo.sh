#!/usr/bin/env bash
# The main job on the embedded local default: rent (Vast API double + podman instance),
# prepare it (toolchain, CUDA check, Volt-X fixture built), destroy it.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
source .venv/bin/activate
export CONTAINERS_CONF="$PWD/volt_ansible/local/containers.conf"

volt-ansible provision --backend local
trap 'volt-ansible destroy --yes' EXIT   # never leave an instance behind, whatever fails below
volt-ansible status
volt-ansible run ping
volt-ansible run prepare          # toolchain + CUDA check + build, through ansible-runner
ansible-playbook playbooks/prepare.yml   # plain Ansible works too; the second run changes nothing
