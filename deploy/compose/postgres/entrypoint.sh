#!/bin/sh
# entrypoint.sh runs one PostgreSQL 15 node of the compose lab as user
# postgres. On first start (empty data directory):
#   primary  initdb; roles ramos (the application, pg_monitor), xlbadmin
#            (superuser: xlb promotes and repoints nodes as it) and
#            replicator (LOGIN REPLICATION); database ramos-test-db; one
#            physical slot per name in XLB_PG_SLOTS.
#   replica  pg_basebackup from XLB_PG_PRIMARY through slot XLB_PG_NAME,
#            primary_conninfo naming a password file in the data directory.
# Later starts reuse the data directory as it is: roles change through xlb
# (promotion, follow), not through this script.
# Passwords come from /run/secrets (compose secrets) and go to PostgreSQL on
# stdin or in 0600 files, never in argv or the environment.
set -eu

role=${XLB_PG_ROLE:-primary}
name=${XLB_PG_NAME:-$(hostname)}
subnet=${XLB_SUBNET:-172.20.0.0/16}
data=${PGDATA:-/var/lib/postgresql/data}
secret() { cat "/run/secrets/$1"; }
as_pg() { setpriv --reuid=postgres --regid=postgres --init-groups "$@"; }
log() { echo "entrypoint[$name]: $*" >&2; }
# sqlstr quotes $1 as an SQL string literal.
sqlstr() { printf "'%s'" "$(printf %s "$1" | sed "s/'/''/g")"; }

mkdir -p "$data" /run/postgresql
chown postgres:postgres "$data" /run/postgresql
chmod 700 "$data"

# settings every node gets, so any node can be primary or replica (the
# netns lab's ReplicationSettings: short retry and receiver timeout for a
# quick failover, hint bits for pg_rewind).
settings() {
	cat <<CONF

# xlb compose lab
listen_addresses = '*'
password_encryption = 'scram-sha-256'
wal_level = 'replica'
max_wal_senders = '10'
max_replication_slots = '10'
hot_standby = 'on'
hot_standby_feedback = 'on'
wal_retrieve_retry_interval = '200ms'
wal_receiver_timeout = '1s'
wal_log_hints = 'on'
wal_keep_size = '128MB'
jit = 'off'
# A client that left during authentication (a probe that timed out) frees
# its backend soon, so a slow machine does not pile up connections.
authentication_timeout = '10s'
CONF
}

hba() {
	cat <<HBA
local all all peer
host all all 127.0.0.1/32 scram-sha-256
host all all $subnet scram-sha-256
host replication all $subnet scram-sha-256
HBA
}

init_primary() {
	log "initdb"
	pwfile=$(mktemp)
	chown postgres "$pwfile"
	secret pg_admin_password >"$pwfile"
	as_pg initdb -D "$data" -U postgres --auth-local=peer --auth-host=scram-sha-256 --pwfile="$pwfile" -E UTF8 --locale=C.UTF-8 >/dev/null
	rm -f "$pwfile"
	settings >>"$data/postgresql.conf"
	hba >"$data/pg_hba.conf"
	as_pg pg_ctl -D "$data" -w -o "-c listen_addresses=''" start >/dev/null
	{
		echo "CREATE ROLE xlbadmin SUPERUSER LOGIN PASSWORD $(sqlstr "$(secret pg_admin_password)");"
		echo "CREATE ROLE ramos LOGIN PASSWORD $(sqlstr "$(secret pg_password)");"
		echo "GRANT pg_monitor TO ramos;"
		echo "CREATE DATABASE \"ramos-test-db\" OWNER ramos;"
		echo "CREATE ROLE replicator LOGIN REPLICATION PASSWORD $(sqlstr "$(secret pg_replication_password)");"
		for s in ${XLB_PG_SLOTS:-}; do
			echo "SELECT pg_create_physical_replication_slot($(sqlstr "$s"), true);"
		done
	} | as_pg psql -X -q -o /dev/null -v ON_ERROR_STOP=1 -d postgres
	as_pg pg_ctl -D "$data" -w -m fast stop >/dev/null
	log "primary initialised (slots: ${XLB_PG_SLOTS:-none})"
}

init_replica() {
	primary=${XLB_PG_PRIMARY:?XLB_PG_PRIMARY names the primary}
	pass="$data/pgpass"
	tmp=$(mktemp -d)
	chown postgres "$tmp"
	printf '*:*:*:replicator:%s\n' "$(secret pg_replication_password)" >"$tmp/pgpass"
	chown postgres "$tmp/pgpass"
	chmod 600 "$tmp/pgpass"
	i=0
	until as_pg pg_isready -q -h "$primary" -t 2; do
		i=$((i + 1))
		if [ "$i" -ge 60 ]; then
			log "primary $primary not ready after 60 tries"
			exit 1
		fi
		sleep 1
	done
	log "pg_basebackup from $primary, slot $name"
	# pg_basebackup needs an empty (or absent) directory.
	rmdir "$data" 2>/dev/null || true
	PGPASSFILE="$tmp/pgpass" as_pg pg_basebackup -D "$data" -w -R -S "$name" -X stream -c fast \
		-d "host=$primary port=5432 user=replicator application_name=$name connect_timeout=5"
	mv "$tmp/pgpass" "$pass"
	rm -rf "$tmp"
	grep -v '^primary_conninfo' "$data/postgresql.auto.conf" >"$data/auto.tmp" || true
	echo "primary_conninfo = 'host=$primary port=5432 user=replicator passfile=$pass application_name=$name connect_timeout=2'" >>"$data/auto.tmp"
	mv "$data/auto.tmp" "$data/postgresql.auto.conf"
	chown postgres:postgres "$data/postgresql.auto.conf"
	chmod 600 "$data/postgresql.auto.conf"
	# postgresql.conf and pg_hba.conf came from the primary.
	chown -R postgres:postgres "$data"
	chmod 700 "$data"
	log "replica initialised"
}

if [ ! -s "$data/PG_VERSION" ]; then
	case $role in
	primary) init_primary ;;
	replica) init_replica ;;
	*) log "XLB_PG_ROLE $role: want primary or replica"; exit 2 ;;
	esac
fi
exec setpriv --reuid=postgres --regid=postgres --init-groups postgres -D "$data"
