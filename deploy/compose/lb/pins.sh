#!/bin/sh
# pins.sh owns the lab's directory in the host's bpffs (XLB_PIN_DIR): it
# creates it, waits, and removes it when stopped. Compose stops it after
# lb1 and lb2 (they depend on it), so `docker-compose down` leaves no pin on
# the host, while `docker restart lb1` keeps them (and with them lb1's
# flows).
set -eu
dir=${XLB_PIN_DIR:?}
case $dir in
/sys/fs/bpf/?*) ;;
*) echo "pins: XLB_PIN_DIR $dir is not under /sys/fs/bpf" >&2; exit 2 ;;
esac
if [ "$(stat -f -c %T /sys/fs/bpf)" != bpf_fs ]; then
	echo "pins: /sys/fs/bpf is not bpffs here: mount it on the host (mount -t bpf bpf /sys/fs/bpf), else restarts lose flows" >&2
	exit 1
fi
mkdir -p "$dir"
chmod 700 "$dir"
echo "pins: $dir ready" >&2
cleanup() {
	rm -rf "$dir"
	echo "pins: removed $dir" >&2
	exit 0
}
trap cleanup TERM INT
while :; do sleep 3600 & wait $!; done
