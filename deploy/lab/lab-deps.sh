#!/bin/sh
# lab-deps.sh installs the Debian 12 packages the lab needs, when missing:
# iproute2 (ip), ethtool, postgresql-15 (initdb, postgres),
# postgresql-client-15 (psql, pg_basebackup, pg_isready) and nftables (nft:
# xlb lab chaos cuts VRRP between the LB hosts). Run as root;
# `make lab` runs it.
#
# Installing postgresql-15 would create and start a "main" cluster on port
# 5432 in the root namespace. The lab runs its own clusters in its
# namespaces and needs none, so create_main_cluster is off for this install
# only; createcluster.conf is restored afterwards.
set -eu

pkgs="iproute2 ethtool postgresql-15 postgresql-client-15 nftables"
missing=""
for p in $pkgs; do
	dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'ok installed' || missing="$missing $p"
done
if [ -z "$missing" ]; then
	echo "lab-deps: present: $pkgs"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "lab-deps: missing$missing, and installing needs root" >&2
	exit 1
fi

echo "lab-deps: installing$missing"
export DEBIAN_FRONTEND=noninteractive
apt-get update -q
case " $missing " in
*" postgresql-15 "*)
	apt-get install -y -q postgresql-common
	conf=/etc/postgresql-common/createcluster.conf
	cp -p "$conf" "$conf.xlb-lab"
	trap 'mv -f "$conf.xlb-lab" "$conf"' EXIT
	sed -i 's/^#\{0,1\}[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
	grep -q '^create_main_cluster = false' "$conf" || echo 'create_main_cluster = false' >>"$conf"
	;;
esac
# shellcheck disable=SC2086 # one word per package
apt-get install -y -q $missing
echo "lab-deps: installed$missing"
