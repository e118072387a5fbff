#!/bin/sh
# client.sh keeps the client container up and gives psql and pgbench the
# application's password through a password file (never argv or env).
set -eu
umask 077
printf '*:*:*:%s:%s\n' "${PGUSER:-ramos}" "$(cat /run/secrets/pg_password)" >/root/.pgpass
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
