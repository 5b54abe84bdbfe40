#!/usr/bin/env bash
# Runs every test, as CI does. Installs what the integration tests need when it is missing:
# Stoplight Prism (npm, pinned by package-lock.json) and Debian's chromium + chromium-driver.
set -euo pipefail
cd "$(dirname "$0")/.."

if [ ! -x node_modules/.bin/prism ]; then
  echo "== installing Stoplight Prism (npm ci)"
  npm ci --no-audit --no-fund
fi

if [ ! -x /usr/bin/chromium ] || [ ! -x /usr/bin/chromedriver ]; then
  echo "== installing chromium and chromium-driver (apt)"
  sudo=""
  if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends chromium chromium-driver
fi

echo "== cargo test --locked"
exec cargo test --locked
