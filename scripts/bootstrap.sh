#!/usr/bin/env bash
# Idempotent set-up of everything the project needs on a fresh Debian machine (run as root):
# Debian packages, the .venv with the project and its tools, and the pinned Go-built binaries.
# Each step is skipped when its result is already there; a second run takes a few seconds.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

DEBIAN_PACKAGES=(
  libvirt-daemon libvirt-daemon-driver-qemu libvirt-clients libvirt-dev pkg-config
  qemu-system-x86 qemu-utils
  fence-agents ipmitool
  gcc python3-dev
)

missing=()
for pkg in "${DEBIAN_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing+=("$pkg")
done
if [ ${#missing[@]} -gt 0 ]; then
  say "installing Debian packages: ${missing[*]}"
  if [ "$(id -u)" -ne 0 ]; then
    echo "bootstrap: Debian packages are missing and this is not root: ${missing[*]}" >&2
    exit 1
  fi
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

# libvirtd's qemu driver refuses to start without these, even when qemu.conf says root.
if ! getent group libvirt-qemu >/dev/null; then groupadd --system libvirt-qemu; fi
if ! getent passwd libvirt-qemu >/dev/null; then
  say "creating the libvirt-qemu system user"
  useradd --system --gid libvirt-qemu --home-dir /var/lib/libvirt --shell /usr/sbin/nologin libvirt-qemu
fi

PYTHON=${PYTHON:-python3}
if ! "$PYTHON" -c 'import sys; sys.exit(sys.version_info < (3, 11))'; then
  echo "bootstrap: $PYTHON is older than 3.11" >&2
  exit 1
fi
stamp_value=$(sha256sum pyproject.toml | cut -d' ' -f1)
if [ ! -x .venv/bin/python ] || [ "$(cat .venv/.bootstrap-stamp 2>/dev/null)" != "$stamp_value" ]; then
  say "creating .venv and installing the project with its test and lab extras"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install -q --disable-pip-version-check --upgrade pip
  .venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
  echo "$stamp_value" > .venv/.bootstrap-stamp
fi

# Finds the binaries (KUBEBUILDER_ASSETS, PATH, cache) or builds them once with `go`: the lab's, and
# kubectl, kustomize and helm for the deploy checks (tests/integration/deploy).
.venv/bin/python -m remediator.lab.binaries --deploy-tools >/dev/null
