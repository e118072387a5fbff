#!/bin/sh
# bench-deps.sh installs Debian 12's haproxy (2.6) when missing: `make bench`
# compares xlb with HAProxy running the classic configuration in the lab's LB
# namespace. The bench starts its own haproxy there, so a haproxy.service
# that the package's install may have started in the root namespace is
# stopped and disabled again: the install leaves nothing running. Run as
# root; the lab's other packages come from deploy/lab/lab-deps.sh.
set -eu

if dpkg-query -W -f='${Status}' haproxy 2>/dev/null | grep -q 'ok installed'; then
	echo "bench-deps: present: haproxy"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "bench-deps: missing haproxy, and installing needs root" >&2
	exit 1
fi

echo "bench-deps: installing haproxy"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
apt-get install -y -q haproxy
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	systemctl disable --now haproxy.service >/dev/null 2>&1 || true
fi
echo "bench-deps: installed haproxy"
