#!/usr/bin/env bash
# Installs Debian's Chromium for the browser tests (broker/tests/browser.rs) when it is
# missing, and prints the path of the browser. Needs root or sudo, and the Debian
# package mirrors; nothing downloads a browser of its own.
#
# The tests run in parallel, so several copies of this script can start at once on a
# fresh machine: they take one lock, and whoever gets it second finds the browser
# installed. apt waits for a dpkg lock held by anything else instead of failing.
set -euo pipefail
find_browser() {
  for bin in /usr/bin/chromium /usr/bin/chromium-browser; do
    if [ -x "$bin" ]; then echo "$bin"; return 0; fi
  done
  return 1
}
find_browser && exit 0
exec 9>"${TMPDIR:-/tmp}/rtc-ensure-chromium.lock"
flock -w 600 9
find_browser && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt=(-o DPkg::Lock::Timeout=300 -qq)
echo "ensure-chromium.sh: installing chromium from the Debian packages" >&2
$sudo apt-get "${apt[@]}" update >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get "${apt[@]}" install -y chromium >&2
find_browser
