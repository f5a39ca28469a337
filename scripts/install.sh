#!/usr/bin/env bash
# Installs volstack into ./.venv (Debian packages first). Safe to run again: it only adds what is missing.
# Usage: scripts/install.sh [--test]   (--test also installs what the test suite needs)
set -euo pipefail
cd "$(dirname "$0")/.."

apt_pkgs=()
need() { dpkg -s "$1" >/dev/null 2>&1 || apt_pkgs+=("$1"); }
need python3-venv
if [ "${1:-}" = "--test" ]; then
  need postgresql          # throwaway PostgreSQL servers for the database tests
fi
if [ ${#apt_pkgs[@]} -gt 0 ]; then
  echo "installing Debian packages: ${apt_pkgs[*]}" >&2
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${apt_pkgs[@]}" >/dev/null
fi

scripts/install-host.sh                    # QEMU, nfs-ganesha + rpcbind, libnfs-utils, busybox-static, syslinux
scripts/build-template.sh >/dev/null       # the built-in template (and the tiny guest it boots), ~/.cache/volstack

PY=${PYTHON:-python3.11}
command -v "$PY" >/dev/null || PY=python3
[ -x .venv/bin/python ] || "$PY" -m venv .venv
.venv/bin/pip install -q --disable-pip-version-check -e ".[test]" 2>&1 | grep -v -e WARNING >&2 || true
.venv/bin/python -c "import volstack.cli" || { echo "volstack failed to install" >&2; exit 1; }

if [ "${1:-}" = "--test" ]; then
  # The real CloudStack clients the acceptance tests drive (see shared/reference/clients.md).
  if [ ! -x .venv-clients/bin/ansible-playbook ]; then
    "$PY" -m venv .venv-clients
    .venv-clients/bin/pip install -q --disable-pip-version-check cs==5.2.0 ansible 2>&1 | grep -v -e WARNING >&2 || true
  fi
  .venv-clients/bin/ansible-playbook --version >/dev/null
  if [ ! -x .venv-cloudmonkey/bin/cloudmonkey ]; then
    PY2=""
    # Debian 12 has no Python 2: a pyenv-built 2.7 is used when there is one   (install-guard: optional)
    for c in python2.7 "$(pyenv root 2>/dev/null)"/versions/2.7*/bin/python2.7; do  # install-guard: optional
      if [ -n "$c" ] && "$c" -V >/dev/null 2>&1; then PY2=$c; break; fi
    done
    [ -n "$PY2" ] || { echo "cloudmonkey 5.3.3.1 needs python2.7, which is not on this machine" >&2; exit 1; }
    "$PY2" -m pip install -q --user 'virtualenv<20.22' 2>&1 | grep -v -e DEPRECATION -e WARNING -e 'Consider adding' >&2 || true
    "$PY2" -m virtualenv -q .venv-cloudmonkey
    .venv-cloudmonkey/bin/pip install -q cloudmonkey==5.3.3.1 2>&1 | grep -v -e DEPRECATION -e WARNING -e 'Consider adding' >&2 || true
  fi
  .venv-cloudmonkey/bin/python -c "import cloudmonkey" 2>/dev/null
fi
