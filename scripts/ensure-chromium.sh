#!/usr/bin/env bash
# Installs Debian's Chromium for the browser test (broker/tests/browser.rs) when it is
# missing, and prints the path of the browser. Needs root or sudo, and the Debian
# package mirrors; nothing downloads a browser of its own.
set -euo pipefail
for bin in /usr/bin/chromium /usr/bin/chromium-browser; do
  if [ -x "$bin" ]; then echo "$bin"; exit 0; fi
done
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
echo "ensure-chromium.sh: installing chromium from the Debian packages" >&2
$sudo apt-get update -qq >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq chromium >&2
echo /usr/bin/chromium
