#!/bin/sh
# entrypoint.sh writes this LB node's xlb configuration from the
# environment and runs `xlb run`. The passwords stay in their secret files
# (/run/secrets, mode 0600); the configuration names the files.
set -eu
name=${XLB_NAME:-$(hostname)}
pins=${XLB_PIN_DIR:?}
if [ "$(stat -f -c %T /sys/fs/bpf)" != bpf_fs ]; then
	echo "entrypoint[$name]: /sys/fs/bpf is not the host's bpffs: pins would not outlive the container" >&2
	exit 1
fi
mkdir -p /etc/xlb "$pins/$name"
nodes=""
for n in ${XLB_NODES:?}; do
	nodes="$nodes
  - name: ${n%%=*}
    address: ${n#*=}:5432"
done
cat >/etc/xlb/xlb.yaml <<CONF
# written by entrypoint.sh for $name
interface: eth0
xdp_mode: ${XLB_XDP_MODE:-generic}
vip: ${XLB_VIP:?}
node_address: ${XLB_NODE_ADDRESS:?}
ports: {rw: 3000, ro: 3001}
snat_ports: 20000-29999
pin_path: $pins/$name
socket: /run/xlb/xlb.sock
postgres:
  user: ramos
  database: ramos-test-db
  password_file: /run/secrets/pg_password
  admin_user: xlbadmin
  admin_password_file: /run/secrets/pg_admin_password
  # The lab's servers have no TLS (prefer would cost a second backend per connect).
  sslmode: disable
# Probes: the netns lab's 500 ms / 300 ms is tight for containers on a busy
# host (a timed-out probe leaves a backend authenticating, the next one
# adds another); XLB_PROBE_INTERVAL / XLB_PROBE_TIMEOUT tune it.
probe:
  interval: ${XLB_PROBE_INTERVAL:-1s}
  timeout: ${XLB_PROBE_TIMEOUT:-2s}
  fall: 3
  rise: 2
vrrp:
  enabled: true
  vrid: 51
  priority: ${XLB_PRIORITY:-100}
  advert_interval: ${XLB_ADVERT_INTERVAL:-50ms}
  preempt: true
  unicast_peers: [${XLB_PEER:?}]
# /stats, /metrics, /healthz, /readyz; published as host ports 8080 (lb1)
# and 8082 (lb2).
http:
  listen: ":8080"
# Newest timeline and system identifier, kept across a container restart.
state_file: /var/lib/xlb/state.json
nodes:$nodes
CONF
exec xlb run --config /etc/xlb/xlb.yaml
