#!/bin/sh
# publish.sh relays this container's ports 3000 and 3001 to the same ports
# on the VIP, for clients outside the docker host (docker publishes a port
# as a DNAT to a container's own address, which xlb's XDP does not serve).
set -eu
vip=${XLB_VIP:?}
socat TCP-LISTEN:3000,fork,reuseaddr "TCP:$vip:3000" &
socat TCP-LISTEN:3001,fork,reuseaddr "TCP:$vip:3001" &
trap 'kill $(jobs -p) 2>/dev/null; exit 0' TERM INT
wait
