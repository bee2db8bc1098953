// Command 4over6ctl is the operator's CLI for fourover6: it talks gRPC to the
// controller (clients, pool, version) and to one data plane (status,
// sessions).
//
// # Addresses
//
// --controller, else $FOUROVER6_CONTROLLER, else
// unix:///run/fourover6/controller.sock; --dataplane, else
// $FOUROVER6_DATAPLANE, else unix:///run/fourover6/dataplane.sock. Forms:
// unix:///path/to.sock or host:port. A command connects only to the daemon
// it needs.
//
// # Exit codes
//
//	0  success
//	1  other error
//	2  bad arguments or flags (unknown flag/command, invalid ADDR, bad -o)
//	3  daemon unreachable
//	4  not found (gRPC NOT_FOUND)
//
// # JSON output
//
// -o json and -o yaml print the same keys. The schema is stable: keys are
// only ever added, never renamed or removed, and every key below is always
// present (except version's controller_error). Times are RFC 3339 in UTC
// with whole seconds ("2025-03-01T10:00:00Z"), "" when unknown; durations are
// Go duration strings ("20s", "1m0s"); counters and sizes are integers.
// "from client" is client-to-IPv4 traffic (102 messages), "to client" is
// IPv4-to-client traffic (103 messages).
//
// clients list: an array ([] when empty) of client objects, sorted by IPv4
// address. clients get ADDR: one client object.
//
//	{"ipv4":"13.8.0.2", "ipv6":"fd00:46::2", "port":51234, "dataplane":"dp1",
//	 "session":"s-2", "connected_since":"2025-03-01T10:00:00Z",
//	 "last_heard":"2025-03-01T10:05:07Z", "bytes_from_client":0,
//	 "packets_from_client":0, "bytes_to_client":0, "packets_to_client":0}
//
// pool show:
//
//	{"prefix":"13.8.0.0/24", "gateway":"13.8.0.1", "range_first":"13.8.0.2",
//	 "range_last":"13.8.0.128", "size":127, "leased":2, "free":124,
//	 "reserved":1, "route":"0.0.0.0", "dns":["202.38.120.242","8.8.8.8","202.106.0.20"]}
//
// status (one data plane; drops maps reason to count, {} when none):
//
//	{"dataplane":"dp1", "version":"v1.0.0", "client_listen":"[::]:5678",
//	 "tun":"4o6", "mtu":1500, "gateway":"13.8.0.1", "pool":"13.8.0.0/24",
//	 "controller":"unix:///run/fourover6/controller.sock",
//	 "controller_connected":true, "started_at":"2025-03-01T10:00:00Z",
//	 "sessions":3, "leased_sessions":2, "accepted_total":10, "closed_total":7,
//	 "bytes_from_client":0, "packets_from_client":0, "bytes_to_client":0,
//	 "packets_to_client":0, "drops":{"spoofed_source":5},
//	 "keepalive_interval":"20s", "keepalive_timeout":"1m0s"}
//
// sessions list: an array ([] when empty), sorted by IPv4 address with
// unleased sessions (ipv4 "") last; state is "accepted", "leased" or
// "closing" ("unknown" from a newer data plane); send_queue counts messages
// waiting to be sent.
//
//	{"ipv4":"13.8.0.2", "ipv6":"fd00:46::2", "port":51234, "session":"s-2",
//	 "dataplane":"dp1", "state":"leased", "connected_since":"...", "last_heard":"...",
//	 "bytes_from_client":0, "packets_from_client":0, "bytes_to_client":0,
//	 "packets_to_client":0, "send_queue":0}
//
// version (exit 0 even when the controller is down):
//
//	{"client":"v1.0.0", "controller":"v1.0.0",
//	 "controller_address":"unix:///run/fourover6/controller.sock",
//	 "controller_error":"cannot reach controller at ...: connection refused"}
//
// Errors go to stderr in the -o format: one line of JSON
// {"error":"...","code":3}, the same two keys in YAML, or
// "4over6ctl: message" with -o table.
//
// The Go types in schema.go define this output.
package main
