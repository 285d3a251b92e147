#!/usr/bin/env bash
# Installs what dsv2 needs to build and test on Debian 12 (run as root, or with sudo available).
set -euo pipefail
SUDO=""
if [[ $(id -u) -ne 0 ]]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends \
  build-essential cmake ninja-build pkg-config git ca-certificates \
  nlohmann-json3-dev libfmt-dev libcli11-dev libpcre2-dev libcpp-httplib-dev \
  libgtest-dev libgmock-dev \
  python3 python3-numpy python3-jinja2 >/dev/null
# Node.js 20 runs the independent reference implementations the tests compare against.
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  $SUDO apt-get install -y -qq --no-install-recommends nodejs npm >/dev/null
fi
