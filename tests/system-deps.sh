#!/bin/sh
# Install the Debian packages the test suite drives (listed in
# tests/debian-packages.txt) when they are missing and we are root.
set -eu
here=$(dirname "$0")
missing=""
for pkg in $(grep -v '^#' "$here/debian-packages.txt"); do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
done
[ -z "$missing" ] && exit 0
if [ "$(id -u)" != 0 ]; then
    echo "system-deps: not root, cannot install:$missing (tests that need them will skip)" >&2
    exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# The tests start their own tor, mosquitto and coturn on loopback: keep the
# packages' init scripts from starting system-wide daemons while installing.
policy=/usr/sbin/policy-rc.d
if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' > "$policy"
    chmod +x "$policy"
    trap 'rm -f "$policy"' EXIT
fi
apt-get update -qq
apt-get install -y -qq --no-install-recommends $missing >/dev/null
