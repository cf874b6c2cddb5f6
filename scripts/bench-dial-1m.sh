#!/bin/sh
# bench-dial-1m.sh: the one-million-connection run of docs/bench-dial.md.
#
# One source (127.0.0.1), a 1,000-port slice (40000-40999) and DESTS
# loopback destinations, filled completely: DESTS x 1,000 concurrent TCP
# connections (1,000,000 with the default DESTS=1000). The connections and
# the accepted sockets are spread over dialer and listener processes
# (portspace bench dial --workers), since one process may hold at most
# 20,000 open files. It runs in a network namespace it creates and removes,
# so other sockets on the machine cannot take ports of the slice and no
# firewall or conntrack rule of the host applies. Needs root. While the
# dialer processes dial, a progress line ("bench dial: 412,000/1,000,000
# dials") is kept up to date on stderr when stderr is a terminal.
#
#   scripts/bench-dial-1m.sh                 # 1,000,000 connections
#   DESTS=200 scripts/bench-dial-1m.sh       # 200,000 connections
#   JSON=1 scripts/bench-dial-1m.sh          # the report as JSON
#   TIMEOUT=5s scripts/bench-dial-1m.sh      # per-dial timeout (default 30s)
set -eu

DESTS=${DESTS:-1000}
PORTS=${PORTS:-40000-40999}
NPORTS=${NPORTS:-1000}
CONNS=$((DESTS * NPORTS))
# Each process holds at most 20,000 open files: 19 destinations x 1,000
# connections per dialer (and per listener) process.
PER=19
WORKERS=${WORKERS:-$(((DESTS + PER - 1) / PER))}
# A generous dial timeout: on a loaded machine a SYN dropped from a full
# accept queue is retransmitted after 1 s, 3 s, 7 s...
TIMEOUT=${TIMEOUT:-30s}
NS=psbench-$$
# Run from the repository root, wherever the script is called from.
cd "$(dirname "$0")/.."

[ "$(id -u)" = 0 ] || { echo "bench-dial-1m: needs root (network namespace, sysctls)" >&2; exit 1; }

# Machine-wide limits: every connection costs two sockets (and two files).
need=$((2 * CONNS + 100000))
if [ "$(cat /proc/sys/fs/file-max)" -lt "$need" ]; then
	echo "bench-dial-1m: raising fs.file-max to $need" >&2
	sysctl -qw fs.file-max="$need"
fi

TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT
BIN=${BIN:-$TMP/portspace}
go build -o "$BIN" ./cmd/portspace

ip netns add "$NS"
trap 'ip netns del "$NS"; rm -rf "$TMP"' EXIT INT TERM
ip netns exec "$NS" ip link set lo up
# Per-namespace settings: the slice must lie inside ip_local_port_range
# (IP_LOCAL_PORT_RANGE only narrows it); a deep accept queue; TIME_WAIT
# buckets and orphans are not needed (connections are reset at the end).
ip netns exec "$NS" sysctl -qw net.ipv4.ip_local_port_range="32768 60999"
ip netns exec "$NS" sysctl -qw net.core.somaxconn=4096
ip netns exec "$NS" sysctl -qw net.ipv4.tcp_max_syn_backlog=4096

set -- bench dial --proto tcp --sources 127.0.0.1 --ports "$PORTS" --destinations "$DESTS" \
	--conns "$CONNS" --workers "$WORKERS" --dialers portspace --concurrency 4 --timeout "$TIMEOUT"
[ -n "${JSON:-}" ] && set -- "$@" --json
echo "+ portspace $*" >&2
ip netns exec "$NS" "$BIN" "$@"
