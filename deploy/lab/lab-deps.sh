#!/bin/sh
# lab-deps.sh installs the Debian 12 packages that xlb's make targets need,
# when missing. It is the one list: `make lab`, `make test`, `make bench`,
# `make generate` and .ci/run all call it, each naming what it is for:
#
#   generate  clang, llvm, libbpf-dev: bpf2go compiles bpf/*.c
#   lab       iproute2 (ip), ethtool, postgresql-15 (initdb, postgres),
#             postgresql-client-15 (psql, pg_basebackup, pg_isready),
#             nftables (xlb-lab chaos cuts VRRP between the LB hosts)
#   bench     lab + haproxy (the classic stack pgbench is compared with)
#   test      generate + lab + what the tests run: keepalived and haproxy
#             (VRRP peer, classic stack), hping3 (SYN floods), tcpdump,
#             procps, bpftool, prometheus (promtool checks /metrics),
#             chromium (the /stats page), systemd (systemd-analyze verify),
#             mmdebstrap and docker-compose (the compose lab), ca-certificates
#   ci        test + make, git
#
#   sh deploy/lab/lab-deps.sh [--check] GROUP...
#
# With everything present it runs one dpkg-query and exits 0 (no apt-get).
# --check only lists what is missing (exit 1 when something is). Installing
# needs root; without it the missing packages are named and the exit
# status is 1.
#
# Installing postgresql-15 would create and start a "main" cluster on port
# 5432 in the root namespace. The lab and the tests run their own clusters
# and need none, so create_main_cluster is off for this install only
# (createcluster.conf is restored afterwards). Daemons that a package's
# install starts in the root namespace (haproxy, keepalived, prometheus)
# are stopped and disabled again: the tests start their own, and the
# install leaves nothing running.
set -eu

check=""
if [ "${1:-}" = "--check" ]; then
	check=1
	shift
fi
[ $# -gt 0 ] || set -- lab

generate="clang llvm libbpf-dev"
lab="iproute2 ethtool postgresql-15 postgresql-client-15 nftables"
pkgs=""
for g in "$@"; do
	case "$g" in
	generate) pkgs="$pkgs $generate" ;;
	lab) pkgs="$pkgs $lab" ;;
	bench) pkgs="$pkgs $lab haproxy" ;;
	test | ci)
		pkgs="$pkgs $generate $lab keepalived haproxy hping3 tcpdump procps bpftool prometheus chromium systemd mmdebstrap docker-compose ca-certificates"
		[ "$g" = ci ] && pkgs="$pkgs make git"
		;;
	*)
		echo "lab-deps: unknown group $g (generate, lab, bench, test, ci)" >&2
		exit 2
		;;
	esac
done
# one word per package, each once
pkgs=$(printf '%s\n' $pkgs | sort -u | tr '\n' ' ')

# One dpkg-query for all: a package is present when its status says
# "install ok installed"; dpkg-query names the unknown ones on stderr.
# shellcheck disable=SC2086 # one word per package
installed=$(dpkg-query -W -f='${Package} ${Status}\n' $pkgs 2>/dev/null | awk '$NF == "installed" {print $1}' || true)
missing=""
for p in $pkgs; do
	case " $(echo $installed) " in
	*" $p "*) ;;
	*) missing="$missing $p" ;;
	esac
done
if [ -z "$missing" ]; then
	echo "lab-deps ($*): present"
	exit 0
fi
if [ -n "$check" ]; then
	echo "lab-deps ($*): missing$missing" >&2
	exit 1
fi
if [ "$(id -u)" != 0 ]; then
	echo "lab-deps ($*): missing$missing; installing needs root: apt-get install -y$missing" >&2
	exit 1
fi

echo "lab-deps ($*): installing$missing"
export DEBIAN_FRONTEND=noninteractive
# XLB_APT_UPDATED=1: the caller (.ci/run) has just run apt-get update.
[ "${XLB_APT_UPDATED:-}" = 1 ] || apt-get update -q
case " $missing " in
*" postgresql-15 "*)
	apt-get install -y -q --no-install-recommends postgresql-common
	conf=/etc/postgresql-common/createcluster.conf
	cp -p "$conf" "$conf.xlb-lab"
	trap 'mv -f "$conf.xlb-lab" "$conf"' EXIT
	sed -i 's/^#\{0,1\}[[:space:]]*create_main_cluster[[:space:]]*=.*/create_main_cluster = false/' "$conf"
	grep -q '^create_main_cluster = false' "$conf" || echo 'create_main_cluster = false' >>"$conf"
	;;
esac
# shellcheck disable=SC2086 # one word per package
apt-get install -y -q --no-install-recommends $missing
if command -v systemctl >/dev/null 2>&1 && [ -d /run/systemd/system ]; then
	for p in haproxy keepalived prometheus; do
		case " $missing " in
		*" $p "*) systemctl disable --now "$p.service" >/dev/null 2>&1 || true ;;
		esac
	done
fi
echo "lab-deps ($*): installed$missing"
