#!/usr/bin/env bash
# Installs everything the test suite needs on a fresh Debian, Ubuntu or Fedora machine, then runs it.
set -euo pipefail
cd "$(dirname "$0")/.."
SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO="sudo"
APT_PACKAGES="gcc libc6-dev libseccomp2 strace git tar bash coreutils util-linux iproute2 procps curl chromium"
DNF_PACKAGES="gcc glibc-devel libseccomp strace git tar bash coreutils util-linux iproute procps-ng curl chromium"
missing=""
if command -v dpkg >/dev/null 2>&1; then
    for p in $APT_PACKAGES; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then
        $SUDO apt-get update -qq
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq $missing >/dev/null
    fi
elif command -v dnf >/dev/null 2>&1; then
    for p in $DNF_PACKAGES; do rpm -q "$p" >/dev/null 2>&1 || missing="$missing $p"; done
    if [ -n "$missing" ]; then $SUDO dnf install -y -q $missing; fi
fi
PY="${PYTHON:-python3}"
# The compiled fast path (setup.py) needs Python's headers; a distribution's Python keeps them apart.
if ! "$PY" -c 'import os, sys, sysconfig; sys.exit(not os.path.exists(os.path.join(sysconfig.get_paths()["include"], "Python.h")))'; then
    if command -v apt-get >/dev/null 2>&1; then
        DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq python3-dev >/dev/null
    elif command -v dnf >/dev/null 2>&1; then
        $SUDO dnf install -y -q python3-devel
    fi
fi
"$PY" -m pip install -q --disable-pip-version-check --root-user-action=ignore -e '.[test]'
# Kernel tests need root; the suite runs as root in CI.
exec "$PY" -m pytest -q "$@"
