#!/usr/bin/env bash
# Everything a fresh Debian/Ubuntu machine needs, idempotent: system packages, .venv, the test-host image.
# The local backend runs rootful podman, so this runs as root (or with sudo).
#   scripts/setup.sh            all of it: the packages, then .venv and the image at the same time
#   scripts/setup.sh packages   the system packages only (what the image build and .venv need)
#   scripts/setup.sh venv       .venv only (the packages must be there)
set -euo pipefail
cd "$(dirname "$0")/.."

packages() {
  local sudo="" p missing=()
  [ "$(id -u)" -eq 0 ] || sudo=sudo
  for p in podman runc debootstrap rsync openssh-client openssh-server tmux git zstd iproute2 ca-certificates systemd; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
  done
  python3 -m venv --help >/dev/null 2>&1 || missing+=(python3-venv)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "setup: installing ${missing[*]}"
    $sudo apt-get update -qq
    $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
  fi
}

venv() {
  if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
  fi
  # The exact versions the tests passed with (constraints.txt, made by scripts/constraints.sh). Skipped when .venv was
  # installed from these very files and still imports: a second run costs nothing.
  local stamp=.venv/.volt-install want rc
  want=$(cat pyproject.toml constraints.txt | sha256sum | cut -d' ' -f1)
  if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ] || ! .venv/bin/python -c 'import volt_ansible.cli, ansible_runner, vastai' 2>/dev/null; then
    rm -f "$stamp"
    # pip's own exit status decides (PIPESTATUS), not the filter's: a failed install stops setup here. --no-compile:
    # no .pyc for all of `ansible`'s ~470 MB of collections up front (60 -> 40 s of CPU here); compile_bytecode below
    # makes them for everything else.
    set +e
    .venv/bin/pip install -q --no-compile --disable-pip-version-check -c constraints.txt -e '.[dev]' 2>&1 | grep -v '^WARNING: Location'
    rc=${PIPESTATUS[0]}
    set -e
    if [ "$rc" -ne 0 ]; then
      echo "setup: pip install failed (exit $rc, see above): nothing else was done; fix it and run scripts/setup.sh again" >&2
      exit "$rc"
    fi
    .venv/bin/python -c 'import volt_ansible.cli, ansible_runner, vastai' # fail here, not later, if the install broke
    echo "$want" > "$stamp"
  fi
  compile_bytecode "$want"
}

# .pyc for the installed packages (not ansible's collections: the roles use ansible.builtin) and this project's Python,
# written explicitly: with PYTHONDONTWRITEBYTECODE set (as on this project's CI machines) Python never writes one on
# import, and then every CLI command and every ansible-playbook compiles what it imports from source again (+0.45 s of
# CPU per CLI command, +0.25 s per playbook, measured). The packages once per install (~13 s of CPU), the project's
# own files every time (a second look at an unchanged file only compares its timestamp).
compile_bytecode() {
  local stamp=.venv/.volt-bytecode
  if [ "$(cat "$stamp" 2>/dev/null)" != "$1" ]; then
    # || true: a file that does not compile (another Python's syntax) is only imported slower
    .venv/bin/python -m compileall -q -j 0 -x '/ansible_collections/' .venv/lib/python3*/site-packages >/dev/null || true
    echo "$1" > "$stamp"
  fi
  .venv/bin/python -m compileall -q volt_ansible roles >/dev/null || true
}

case "${1:-all}" in
  packages) packages ;;
  venv) venv ;;
  all)
    packages
    # The instance image (bare: like nvidia/cuda:*-devel) is built by stdlib-only Python (the system python3 runs it),
    # so it needs no .venv: debootstrap (~1 min, then cached by recipe) runs while pip installs.
    CONTAINERS_CONF="$PWD/volt_ansible/local/containers.conf" setsid python3 -m volt_ansible.local.image bare >/dev/null &
    image=$!
    trap 'kill -- -"$image" 2>/dev/null || true' EXIT  # a failed pip must not leave debootstrap running
    venv
    wait "$image" || { echo "setup: building the test-host image failed (see above)" >&2; exit 1; }
    echo "setup: ready (activate with: source .venv/bin/activate)"
    ;;
  *) echo "usage: scripts/setup.sh [packages|venv]" >&2; exit 2 ;;
esac
