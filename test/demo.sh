#!/usr/bin/env bash
# The demo: the whole tunnel on embedded defaults, in three network
# namespaces this script creates (nothing leaves them):
#
#   fo6demo-cli   IPv6-only client: 4over6-client, TUN 4o6c
#        │ veth, fd00:46::/64 (IPv6 only)
#   fo6demo-srv   4over6-controller + 4over6-dataplane (TUN 4o6, 13.8.0.1)
#        │ veth, 198.51.100.0/24 (TEST-NET-2)
#   fo6demo-inet  an "IPv4 internet" web server at 198.51.100.2, with no
#                 route to the pool: the data plane NATs (--nat)
#
# Everything else of the demo (sockets, state, logs) is in $STATE, so it
# never meets a fourover6 installed on the host (/run/fourover6).
# Colours only on a terminal, and not with NO_COLOR set (no-color.org).
#
# Usage: test/demo.sh up     (KEEP=1 leaves it running; then: down)
#        test/demo.sh down
set -euo pipefail
cd "$(dirname "$0")/.."

SRV=fo6demo-srv CLI=fo6demo-cli INET=fo6demo-inet
STATE=/run/fourover6-demo
BIN=$PWD/bin
GO=${GO:-go}

CTL_SOCK=$STATE/controller.sock DP_SOCK=$STATE/dataplane.sock
# 4over6ctl finds the demo's daemons through these instead of the defaults.
export FOUROVER6_CONTROLLER=unix://$CTL_SOCK FOUROVER6_DATAPLANE=unix://$DP_SOCK

if [ -t 1 ] && [ -z "${NO_COLOR:-}" ] && [ "${TERM:-}" != dumb ]; then
  BOLD=$'\033[1m' DIM=$'\033[2m' RESET=$'\033[0m'
else
  BOLD='' DIM='' RESET=''
fi
bold() { printf '\n%s== %s%s\n' "$BOLD" "$*" "$RESET"; }
run() { printf '%s$ %s%s\n' "$DIM" "$*" "$RESET"; "$@"; }

down() {
  for f in "$STATE"/*.pid; do
    [ -e "$f" ] || continue
    kill "$(cat "$f")" 2>/dev/null || true
  done
  sleep 0.5
  for f in "$STATE"/*.pid; do
    [ -e "$f" ] || continue
    kill -9 "$(cat "$f")" 2>/dev/null || true
    rm -f "$f"
  done
  for ns in $CLI $SRV $INET; do ip netns del "$ns" 2>/dev/null || true; done
  rm -f "$STATE/controller.db" "$STATE"/*.log "$STATE/headers" "$CTL_SOCK" "$DP_SOCK"
}

start() { # name ns cmd...
  local name=$1 ns=$2; shift 2
  ip netns exec "$ns" "$@" >"$STATE/$name.log" 2>&1 &
  echo $! >"$STATE/$name.pid"
}

wait_for() { # description command...
  local what=$1; shift
  for _ in $(seq 1 100); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "demo: timed out waiting for $what; logs:" >&2
  tail -n 20 "$STATE"/*.log >&2
  exit 1
}

up() {
  [ "$(id -u)" -eq 0 ] || { echo "demo: run as root (network namespaces, TUN)" >&2; exit 1; }
  [ -x "$BIN/4over6-dataplane" ] || { echo "demo: build first (make build)" >&2; exit 1; }
  down
  mkdir -p "$STATE"
  $GO build -o "$STATE/httpserve" ./test/httpserve

  bold "Network namespaces: IPv6-only client, server, IPv4 internet"
  for ns in $SRV $CLI $INET; do ip netns add $ns; ip -n $ns link set lo up; done
  ip -n $SRV link add v6c type veth peer name v6s netns $CLI
  ip -n $SRV addr add fd00:46::1/64 dev v6c nodad
  ip -n $CLI addr add fd00:46::2/64 dev v6s nodad
  ip -n $SRV link add v4i type veth peer name v4s netns $INET
  ip -n $SRV addr add 198.51.100.1/24 dev v4i
  ip -n $INET addr add 198.51.100.2/24 dev v4s
  for l in "$SRV v6c" "$CLI v6s" "$SRV v4i" "$INET v4s"; do set -- $l; ip -n $1 link set $2 up; done
  # The IPv4 host has no route to the pool: the data plane's --nat
  # masquerades the clients behind 198.51.100.1, as a lab server does.
  echo "client side has no IPv4 at all:"; run ip -n $CLI -4 addr show

  bold "Server: controller and data plane, on their default settings (but their own sockets)"
  # Defaults throughout, but the demo's sockets and state live (and go)
  # with the demo, in $STATE.
  ctl=("$BIN/4over6-controller" --listen "unix://$CTL_SOCK" --state "$STATE/controller.db")
  dp=("$BIN/4over6-dataplane" --controller "unix://$CTL_SOCK" --api "unix://$DP_SOCK" --id demo-dp1 --nat)
  run "${ctl[@]}" --check-config && run "${dp[@]}" --check-config && echo "configuration ok"
  start controller $SRV "${ctl[@]}"
  wait_for "controller" test -S "$CTL_SOCK"
  start dataplane $SRV "${dp[@]}"
  wait_for "data plane" "$BIN/4over6ctl" dataplane status
  start web $INET "$STATE/httpserve" --listen 198.51.100.2:80
  run "$BIN/4over6ctl" status

  bold "Client: 4over6-client connects over IPv6 and gets an IPv4 address"
  start client $CLI "$BIN/4over6-client" --server '[fd00:46::1]:5678' --tun 4o6c
  wait_for "client lease" bash -c "ip -n $CLI -4 addr show dev 4o6c | grep -q inet"
  run ip -n $CLI -4 addr show dev 4o6c
  run ip -n $CLI -4 route

  bold "IPv4 through the tunnel: ping and HTTP to 198.51.100.2"
  wait_for "path to the web server" ip netns exec $CLI curl -sf -m 2 http://198.51.100.2/
  run ip netns exec $CLI ping -c 3 -i 0.2 198.51.100.2
  run ip netns exec $CLI curl -sS http://198.51.100.2/
  echo "10 MB download:"
  ip netns exec $CLI curl -sS -o /dev/null -D "$STATE/headers" \
    -w '  %{size_download} bytes in %{time_total}s (%{speed_download} bytes/s)\n' \
    "http://198.51.100.2/data?n=10000000"
  want=$(grep -i '^x-sha256' "$STATE/headers" | awk '{print $2}' | tr -d '\r')
  got=$(ip netns exec $CLI curl -sS "http://198.51.100.2/data?n=10000000" | sha256sum | awk '{print $1}')
  [ "$want" = "$got" ] && echo "  sha256 ok: $got" || { echo "  sha256 MISMATCH: $got != $want"; exit 1; }

  bold "Who is connected: 4over6ctl clients list"
  sleep 5.5 # one session report interval, so the counters are fresh
  run "$BIN/4over6ctl" clients list
  run "$BIN/4over6ctl" pool show
  run "$BIN/4over6ctl" clients list -o json

  if [ "${KEEP:-0}" = 1 ]; then
    bold "Left running (logs in $STATE). Try: ip netns exec $CLI curl http://198.51.100.2/"
    echo "4over6ctl reaches the demo's daemons with"
    echo "  export FOUROVER6_CONTROLLER=$FOUROVER6_CONTROLLER FOUROVER6_DATAPLANE=$FOUROVER6_DATAPLANE"
    echo "then: make demo-down"
  else
    bold "Tearing down (KEEP=1 make demo leaves it running)"
    down
    echo "done."
  fi
}

case "${1:-up}" in
  up) trap 'rc=$?; if [ $rc -ne 0 ]; then echo "demo failed; cleaning up" >&2; down; fi' EXIT; up ;;
  down) down ;;
  *) echo "usage: $0 up|down" >&2; exit 2 ;;
esac
