#!/usr/bin/env bash
# Idempotent: installs the Debian package `prometheus` (prometheus + promtool) when either binary
# is missing; does nothing when both are on PATH. Used by `make test` (the monitoring tests run
# their own Prometheus server on a free port with a temporary config and data directory).
#
# The Debian package also enables a `prometheus` service on :9090 with /etc/prometheus; nothing
# here relies on it. Where services can start (a normal host), it is stopped and disabled again
# so it does not scrape in the background; in containers without systemd it never starts.
set -euo pipefail

if command -v prometheus >/dev/null 2>&1 && command -v promtool >/dev/null 2>&1; then
  exit 0
fi

SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || {
    echo "install_prometheus: prometheus/promtool are missing and this is not root (no sudo);" \
         "install the Debian package 'prometheus' first" >&2
    exit 1
  }
  SUDO="sudo"
fi
command -v apt-get >/dev/null 2>&1 || {
  echo "install_prometheus: apt-get not found; install Prometheus (prometheus and promtool on PATH)" \
       "from https://prometheus.io/download/ instead" >&2
  exit 1
}

echo "install_prometheus: installing the Debian package prometheus (prometheus, promtool)"
export DEBIAN_FRONTEND=noninteractive
# policy-rc.d exit 101: do not start the packaged service during the install (containers, CI).
policy=/usr/sbin/policy-rc.d
created_policy=0
if [ ! -e "$policy" ]; then
  printf '#!/bin/sh\nexit 101\n' | $SUDO tee "$policy" >/dev/null
  $SUDO chmod +x "$policy"
  created_policy=1
fi
cleanup() { if [ "$created_policy" = 1 ]; then $SUDO rm -f "$policy"; fi; }
trap cleanup EXIT

# Refresh the package lists only when they are missing or the package is unknown to them.
if ! apt-cache show prometheus >/dev/null 2>&1; then
  $SUDO apt-get update -qq
fi
install() { $SUDO apt-get install -y -qq --no-install-recommends prometheus >/dev/null; }
# Stale lists can point at superseded .deb versions (404): refresh once and retry.
install || { $SUDO apt-get update -qq && install; }
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
  $SUDO systemctl disable --now prometheus >/dev/null 2>&1 || true
fi

command -v prometheus >/dev/null && command -v promtool >/dev/null || {
  echo "install_prometheus: the package installed, but prometheus/promtool are not on PATH" >&2
  exit 1
}
echo "install_prometheus: $(prometheus --version 2>&1 | head -1)"
