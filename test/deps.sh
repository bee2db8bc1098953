#!/usr/bin/env bash
# Installs what the tests or the demo need on a fresh Debian machine, as
# root, with apt-get. Idempotent, and quiet when all is there already.
#
# Usage: test/deps.sh [test|demo|bench]
#   demo  (make demo) iproute2 (ip netns, veth), curl and ping, kmod for the
#         tun module
#   test  (make test; the default) all of the demo's, and gcc (go test -race
#         needs cgo), iperf3 (the bench smoke test measures throughput with
#         it), etcd-server (the store conformance suite, the etcd
#         benchmarks and the two-controller end-to-end test start their own
#         etcd on loopback) and tcpdump (reads what clients capture wrote)
#   bench (make bench, with test) all of the demo's, iperf3, and the
#         reference tunnels the bench measures beside ours: wireguard-tools
#         (wg configures the wireguard-go the bench builds itself) and
#         openvpn

set -euo pipefail

what=${1:-test}
need=()
case "$what" in
  demo|test|bench) ;;
  *) echo "usage: $0 [test|demo|bench]" >&2; exit 2 ;;
esac

command -v ip >/dev/null || need+=(iproute2)
command -v curl >/dev/null || need+=(curl)
command -v ping >/dev/null || need+=(iputils-ping)
command -v modprobe >/dev/null || need+=(kmod)
if [ "$what" = test ]; then
  command -v gcc >/dev/null || need+=(gcc libc6-dev)
  command -v iperf3 >/dev/null || need+=(iperf3)
  command -v etcd >/dev/null || need+=(etcd-server)
  { command -v tcpdump || [ -x /usr/bin/tcpdump ]; } >/dev/null || need+=(tcpdump) # reads the files of clients capture
  { command -v bird || [ -x /usr/sbin/bird ]; } >/dev/null || need+=(bird2) # BIRD 2, the router of the BGP tests (test/bird)
fi
if [ "$what" = bench ]; then
  command -v iperf3 >/dev/null || need+=(iperf3)
  { command -v wg || [ -x /usr/bin/wg ]; } >/dev/null || need+=(wireguard-tools)
  { command -v openvpn || [ -x /usr/sbin/openvpn ]; } >/dev/null || need+=(openvpn)
fi

if [ ${#need[@]} -gt 0 ]; then
  if [ "$(id -u)" -ne 0 ]; then
    echo "deps: missing ${need[*]}; run as root (or install them) first" >&2
    exit 1
  fi
  echo "deps: installing ${need[*]}"
  export DEBIAN_FRONTEND=noninteractive
  # etcd-server, bird2 and openvpn come with system services that Debian starts on
  # install; the tests run their own instances with their own config, so
  # forbid service starts while installing (policy-rc.d, honoured by
  # invoke-rc.d and deb-systemd-invoke) unless the host already has a policy.
  policy=/usr/sbin/policy-rc.d own_policy=
  if [ ! -e "$policy" ]; then
    printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod 0755 "$policy" && own_policy=1
    trap '[ -n "$own_policy" ] && rm -f "$policy"' EXIT
  fi
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

if ! command -v go >/dev/null; then
  echo "deps: Go is not on PATH (expected /usr/local/go/bin); the module needs Go 1.26" >&2
  exit 1
fi

if [ ! -c /dev/net/tun ] && [ "$(id -u)" -eq 0 ]; then
  modprobe tun 2>/dev/null || true
  if [ ! -c /dev/net/tun ]; then
    mkdir -p /dev/net && mknod /dev/net/tun c 10 200 && chmod 0666 /dev/net/tun
  fi
fi
