#!/usr/bin/env bash
# Sets up everything omnimask needs on a fresh Debian/Ubuntu machine with Python 3.11+:
# the system libraries (open3d needs libusb), uv, and the locked workspace in .venv.
set -euo pipefail
cd "$(dirname "$0")/.."

system_packages=(libusb-1.0-0)
missing=()
for package in "${system_packages[@]}"; do
  dpkg -s "$package" >/dev/null 2>&1 || missing+=("$package")
done
if ((${#missing[@]})); then
  sudo=""
  [ "$(id -u)" -ne 0 ] && sudo="sudo"
  echo "installing system packages: ${missing[*]}"
  $sudo apt-get update -qq
  $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}"
fi

if ! type -P uv >/dev/null && ! python3 -m uv --version >/dev/null 2>&1; then
  echo "installing uv"
  python3 -m pip install --quiet --user uv 2>/dev/null || python3 -m pip install --quiet uv
fi
# `type -P` looks for a uv binary on PATH only (`command -v` would find this function itself).
uv() { if type -P uv >/dev/null; then command uv "$@"; else python3 -m uv "$@"; fi; }

uv sync --frozen --all-packages
