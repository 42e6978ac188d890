#!/usr/bin/env bash
# Installs Debian's redis-server (with redis-cli) for the cluster-mode tests when it is
# missing, and prints the path of redis-server. Needs root or sudo, and the Debian
# package mirrors. The tests start their own servers on free loopback ports with temp
# dirs; a system service the package may start is not used.
#
# Tests run in parallel, so several copies can start at once on a fresh machine: they
# take one lock, and whoever gets it second finds redis-server installed.
set -euo pipefail
find_server() {
  for bin in /usr/bin/redis-server /usr/local/bin/redis-server; do
    if [ -x "$bin" ]; then echo "$bin"; return 0; fi
  done
  return 1
}
find_server && exit 0
exec 9>"${TMPDIR:-/tmp}/rtc-ensure-redis.lock"
flock -w 600 9
find_server && exit 0
sudo=""
if [ "$(id -u)" -ne 0 ]; then sudo="sudo"; fi
apt=(-o DPkg::Lock::Timeout=300 -qq)
echo "ensure-redis.sh: installing redis-server from the Debian packages" >&2
$sudo apt-get "${apt[@]}" update >&2
DEBIAN_FRONTEND=noninteractive $sudo apt-get "${apt[@]}" install -y redis-server >&2
find_server
