// Package dataplane is the data plane's core as a plain Go API: it accepts
// client connections, runs a session per client, forwards packets between
// the TUN and the sessions, sends keepalives and cuts silent clients, and
// asks the controller for addresses. The gRPC API (package api) and the
// daemon (cmd/4over6-dataplane) are thin layers over it.
//
// Sub-packages, in the order a packet meets them: wire (framing), packet
// (IPv4 checks), session (one client), route (address -> session), tun
// (the interface), netcfg (links and routes), ctlink (the controller
// client), api (gRPC server).
package dataplane
