#!/usr/bin/env bash
# Idempotent: the Debian packages the serving-layer tests and benchmark need.
#   chromium + chromium-driver  headless browser for tests/integration/test_serve.py (explorer page)
#   wrk                         HTTP load generator for bench/bench_serve.py
# Installs only what is missing; needs root (or sudo) the first time, nothing afterwards.
set -euo pipefail
needed=()
[ -x /usr/bin/chromium ] || needed+=(chromium)
[ -x /usr/bin/chromedriver ] || needed+=(chromium-driver)
command -v wrk >/dev/null 2>&1 || needed+=(wrk)
[ ${#needed[@]} -eq 0 ] && exit 0
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  command -v sudo >/dev/null 2>&1 || { echo "install_test_tools: need root to install ${needed[*]}" >&2; exit 1; }
  SUDO="sudo"
fi
echo "install_test_tools: installing ${needed[*]}"
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends "${needed[@]}" >/dev/null
