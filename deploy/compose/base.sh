#!/bin/bash
# base.sh builds the compose lab's base image offline, from Debian's
# packages: mmdebstrap a minimal Debian 12 (bookworm) with the packages the
# lab's images need, straight into `docker import`. No container registry
# is involved. The image is tagged xlb-base:<hash>, where the hash covers
# this script (and so the package list), so an unchanged script reuses the
# image. The tag is printed on stdout; progress goes to stderr.
#
# Environment:
#   XLB_DEBIAN_MIRROR  Debian mirror (default: the first non-security URI
#                      apt uses on this host, else http://deb.debian.org/debian)
#   XLB_BASE_REBUILD=1 build even when the image exists
set -euo pipefail

SUITE=bookworm
# postgresql-15: server, pgbench; postgresql-client-15: psql, pg_isready,
# pg_basebackup; iproute2 for `ip`; procps for ps; socat for the publish
# relay; systemd for the test that runs deploy/xlb.service under systemd
# as a container's PID 1.
PACKAGES=postgresql-15,postgresql-client-15,iproute2,procps,socat,systemd

here=$(cd "$(dirname "$0")" && pwd)
hash=$(sha256sum "$here/base.sh" | cut -c1-12)
tag="xlb-base:$hash"

if [ "${XLB_BASE_REBUILD:-}" != 1 ] && docker image inspect "$tag" >/dev/null 2>&1; then
	echo "base.sh: $tag exists" >&2
	echo "$tag"
	exit 0
fi
if [ "$(id -u)" != 0 ]; then
	echo "base.sh: needs root (mmdebstrap)" >&2
	exit 1
fi
if ! command -v mmdebstrap >/dev/null; then
	echo "base.sh: installing mmdebstrap" >&2
	DEBIAN_FRONTEND=noninteractive apt-get install -y -q --no-install-recommends mmdebstrap >&2
fi

mirror=${XLB_DEBIAN_MIRROR:-}
if [ -z "$mirror" ]; then
	mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
		awk '/^URIs:/ { for (i = 2; i <= NF; i++) if ($i !~ /security/) { print $i; exit } }')
fi
if [ -z "$mirror" ]; then
	mirror=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' /etc/apt/sources.list 2>/dev/null || true)
fi
mirror=${mirror:-http://deb.debian.org/debian}

start=$(date +%s)
echo "base.sh: mmdebstrap $SUITE from $mirror, importing as $tag" >&2
# Left out while unpacking: documentation, and PostgreSQL's JIT (its LLVM
# bitcode is thousands of files; the lab sets jit = off). No default
# cluster: the lab's entrypoint makes its own.
# force-unsafe-io: no fsync per unpacked file (the tree goes into a tar
# stream anyway); without it dpkg's fsyncs dominate on a busy machine.
mmdebstrap --variant=essential --include="$PACKAGES" \
	--dpkgopt=force-unsafe-io \
	--dpkgopt='path-exclude=/usr/share/doc/*' \
	--dpkgopt='path-exclude=/usr/share/man/*' \
	--dpkgopt='path-exclude=/usr/share/locale/*' \
	--dpkgopt='path-exclude=/usr/lib/postgresql/15/lib/bitcode/*' \
	--essential-hook='mkdir -p "$1/etc/postgresql-common" && echo "create_main_cluster = false" >"$1/etc/postgresql-common/createcluster.conf"' \
	"$SUITE" - "$mirror" |
	docker import \
		--change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
		--change 'CMD ["/bin/bash"]' \
		--message "xlb compose base: mmdebstrap $SUITE $PACKAGES" - "$tag" >&2
echo "base.sh: built $tag in $(( $(date +%s) - start )) s" >&2
echo "$tag"
