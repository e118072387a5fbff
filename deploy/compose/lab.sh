#!/bin/bash
# lab.sh drives the compose lab for `make compose`, `make compose-down` and
# the tests (tests/compose):
#
#   lab.sh up     build xlb and the images, write per-lab secrets, up -d,
#                 wait until every service is healthy and lb1 routes
#   lab.sh demo   write via VIP:3000 and read via VIP:3001 from the client
#                 container, then `xlb backends` on lb1
#   lab.sh down   down -v: containers, network, volumes; the pins service
#                 removes this lab's pins from the host's bpffs; secrets go
#
# Environment (all optional):
#   COMPOSE_PROJECT_NAME  project (default xlb)
#   XLB_BASE_IMAGE        base of the lab's images; default: debian:bookworm-slim
#                         when a registry gives it, else xlb-base built offline
#                         by base.sh
#   XLB_SECRETS_DIR       where the password files go (default deploy/compose/secrets)
#   XLB_UP_TIMEOUT        seconds to wait for health (default 300)
#   XLB_NO_ENV_FILE=1     do not write deploy/compose/.env (tests)
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
export COMPOSE_PROJECT_NAME=${COMPOSE_PROJECT_NAME:-xlb}
export XLB_SECRETS_DIR=${XLB_SECRETS_DIR:-$here/secrets}
subnet=172.20.0.0/16

say() { echo "compose lab: $*" >&2; }
die() { say "$*"; exit 1; }

if docker compose version >/dev/null 2>&1; then
	compose=(docker compose)
else
	compose=(docker-compose)
fi
dc() { "${compose[@]}" --project-directory "$here" -f "$here/docker-compose.yml" "$@"; }

# check_subnet refuses when anything in the root namespace or another
# docker network already uses the lab's subnet (two compose labs cannot
# run at once: the subnet is fixed).
check_subnet() {
	local net
	for net in $(docker network ls -q); do
		if docker network inspect -f '{{range .IPAM.Config}}{{.Subnet}} {{end}}' "$net" | grep -qw "$subnet"; then
			local name project
			name=$(docker network inspect -f '{{.Name}}' "$net")
			project=$(docker network inspect -f '{{index .Labels "com.docker.compose.project"}}' "$net")
			if [ "$project" = "$COMPOSE_PROJECT_NAME" ]; then
				continue
			fi
			die "docker network $name (compose project '${project:-none}') already uses $subnet: another compose lab is up; take it down first (COMPOSE_PROJECT_NAME=${project:-?} $0 down, or docker-compose -p ${project:-?} down -v)"
		fi
	done
	if ip -4 -o addr show to "$subnet" | grep -q . || ip -4 route show root "$subnet" | grep -q . || ip -4 route show match 172.20.0.1 | grep -v '^default' | grep -q .; then
		if ! docker network ls -q --filter "label=com.docker.compose.project=$COMPOSE_PROJECT_NAME" | grep -q .; then
			die "the root namespace already has an address or route in $subnet ($(ip -4 -o addr show to "$subnet" | awk '{print $2, $4}'; ip -4 route show root "$subnet")): the lab's docker bridge would collide"
		fi
	fi
}

ensure_bpffs() {
	if [ "$(stat -f -c %T /sys/fs/bpf)" != bpf_fs ]; then
		say "mounting bpffs at /sys/fs/bpf (pinned flows outlive lb restarts)"
		mount -t bpf bpf /sys/fs/bpf
	fi
}

secrets() {
	mkdir -p "$XLB_SECRETS_DIR"
	chmod 700 "$XLB_SECRETS_DIR"
	local s
	for s in pg_password pg_admin_password pg_replication_password pgadmin_password; do
		if [ ! -s "$XLB_SECRETS_DIR/$s" ]; then
			(umask 077 && head -c 18 /dev/urandom | base64 | tr '+/' '-_' >"$XLB_SECRETS_DIR/$s")
		fi
		chmod 600 "$XLB_SECRETS_DIR/$s"
	done
}

base_image() {
	if [ -n "${XLB_BASE_IMAGE:-}" ]; then
		echo "$XLB_BASE_IMAGE"
		return
	fi
	if docker image inspect debian:bookworm-slim >/dev/null 2>&1 ||
		timeout 20 docker pull -q debian:bookworm-slim >/dev/null 2>&1; then
		echo debian:bookworm-slim
		return
	fi
	say "no registry gives debian:bookworm-slim: building the base image offline (base.sh)"
	"$here/base.sh"
}

# health NAME prints the container's health (or state when it has no
# health check).
health() {
	local id
	id=$(dc ps -q "$1" 2>/dev/null || true)
	[ -n "$id" ] || { echo missing; return; }
	docker inspect -f '{{if .State.Health}}{{.State.Health.Status}}{{else}}{{.State.Status}}{{end}}' "$id"
}

wait_healthy() {
	local deadline=$((SECONDS + ${XLB_UP_TIMEOUT:-300})) s bad
	while :; do
		bad=""
		for s in pg1 pg2 pg3 lb1 lb2; do
			[ "$(health "$s")" = healthy ] || bad="$bad $s:$(health "$s")"
		done
		[ -z "$bad" ] && break
		if [ $SECONDS -ge $deadline ]; then
			dc ps >&2
			dc logs --tail 30 >&2
			die "not healthy after ${XLB_UP_TIMEOUT:-300} s:$bad"
		fi
		sleep 2
	done
	# lb1 routes: pg1 in the read/write pool, both replicas in the read-only one.
	deadline=$((SECONDS + 60))
	until dc exec -T lb1 xlb backends --json 2>/dev/null | grep -q '"pg3"' &&
		dc exec -T lb1 xlb backends 2>/dev/null | grep -E '^pg1 ' | grep -q primary; do
		[ $SECONDS -ge $deadline ] && { dc exec -T lb1 xlb backends >&2 || true; die "lb1 does not route after 60 s"; }
		sleep 1
	done
	# lb1 (priority 150, preempt) holds the VIP, so no takeover is still to
	# come and cut the first connections.
	deadline=$((SECONDS + 60))
	until dc exec -T lb1 ip -4 -o addr show dev eth0 2>/dev/null | grep -q ' 172\.20\.0\.100/' &&
		! dc exec -T lb2 ip -4 -o addr show dev eth0 2>/dev/null | grep -q ' 172\.20\.0\.100/'; do
		[ $SECONDS -ge $deadline ] && die "lb1 does not hold the VIP alone after 60 s"
		sleep 1
	done
}

up() {
	[ "$(id -u)" = 0 ] || die "needs root (bpffs on the host, XDP in the lb containers)"
	command -v "${compose[0]}" >/dev/null || die "neither 'docker compose' nor docker-compose found"
	check_subnet
	ensure_bpffs
	say "building xlb (CGO_ENABLED=0) into deploy/compose/lb/xlb"
	(cd "$repo" && CGO_ENABLED=0 go build -o "$here/lb/xlb" ./cmd/xlb)
	secrets
	XLB_BASE_IMAGE=$(base_image)
	export XLB_BASE_IMAGE
	say "project $COMPOSE_PROJECT_NAME, base image $XLB_BASE_IMAGE"
	if [ "${XLB_NO_ENV_FILE:-}" != 1 ]; then
		# So plain docker-compose in deploy/compose (ps, logs, exec) finds this lab.
		printf 'COMPOSE_PROJECT_NAME=%s\nXLB_BASE_IMAGE=%s\nXLB_SECRETS_DIR=%s\n' \
			"$COMPOSE_PROJECT_NAME" "$XLB_BASE_IMAGE" "$XLB_SECRETS_DIR" >"$here/.env"
	fi
	# pg1 and lb1 build the two images; the other services share them.
	dc build -q pg1 lb1
	dc up -d
	wait_healthy
	say "up (project $COMPOSE_PROJECT_NAME)"
	dc ps >&2
}

demo() {
	say "write through VIP:3000 (client container, 172.20.0.50)"
	dc exec -T client psql -X -v ON_ERROR_STOP=1 -p 3000 -c \
		"CREATE TABLE IF NOT EXISTS demo (id serial PRIMARY KEY, at timestamptz DEFAULT now(), via text);
		 INSERT INTO demo (via) VALUES ('VIP:3000');
		 SELECT inet_server_addr() AS server, pg_is_in_recovery() AS replica, count(*) AS rows FROM demo;"
	say "read through VIP:3001, six new connections"
	local i
	for i in 1 2 3 4 5 6; do
		dc exec -T client psql -X -At -p 3001 -c \
			"SELECT 'read ' || $i || ': server ' || host(inet_server_addr()) || ', replica ' || pg_is_in_recovery() || ', rows ' || (SELECT count(*) FROM demo)"
	done
	say "xlb backends on lb1"
	dc exec -T lb1 xlb backends
	say "xlb status on lb1"
	dc exec -T lb1 xlb status
}

down() {
	dc down -v --remove-orphans
	rm -rf "$XLB_SECRETS_DIR"
	[ "${XLB_NO_ENV_FILE:-}" = 1 ] || rm -f "$here/.env"
	[ -d "/sys/fs/bpf/xlb-compose-$COMPOSE_PROJECT_NAME" ] && say "warning: pins left in /sys/fs/bpf/xlb-compose-$COMPOSE_PROJECT_NAME"
	return 0
}

case ${1:-} in
up) up ;;
demo) demo ;;
down) down ;;
*) echo "usage: $0 up|demo|down" >&2; exit 2 ;;
esac
