#!/bin/sh
# netns.sh holds an LB node's network namespace (lb1-net, lb2-net in
# docker-compose.yml) for the xlb container that joins it: it does nothing
# but wait, and ends at once when stopped.
trap 'exit 0' TERM INT
while :; do sleep 3600 & wait $!; done
