// Command 4over6ctl is the operator's CLI for fourover6: it talks gRPC to the
// controller (clients, pool, reservations, DNS, the data plane registry,
// version) and to one data plane (its status and sessions).
//
// # Commands
//
//	status                                  controller, pool, data planes and the local data plane
//	check [--pool-warn P]                   health check: exit 0, or 6 with one line per problem
//	clients list|get ADDR|kick ADDR|watch   the client table (list/watch: --dataplane-id ID, --v6-prefix P;
//	                                        get: IPv4 or IPv6; watch reconnects and resumes)
//	pool show|set-range A-B                 the address pool
//	reservations list|set CLIENT ADDR|delete CLIENT
//	dns show|set a,b,c
//	dataplane list|drain ID|undrain ID|remove ID [--force]   (controller) — aliases dataplanes, dp
//	dataplane status|log-level LEVEL        (the data plane at --dataplane)
//	sessions list|kick ADDR|SESSION         (the data plane at --dataplane)
//	apply -f FILE [--dry-run]               declarative pool range, DNS, reservations
//	export                                  what apply -f takes, as the controller has it
//	log-level LEVEL, version, completion SHELL
//	pki init DIR | issue ROLE NAME          certificates for mutual TLS (no daemon needed)
//	docs DIR                                (hidden) the Markdown reference, for make docs
//
// # Addresses
//
// --controller, else $FOUROVER6_CONTROLLER, else
// unix:///run/fourover6/controller.sock; --dataplane, else
// $FOUROVER6_DATAPLANE, else unix:///run/fourover6/dataplane.sock. Forms:
// unix:///path/to.sock or host:port. The controller may be several
// comma-separated addresses: the leader is preferred, and a follower's "not
// the leader" moves a request to the next address (conn.go). A command
// connects only to the daemons it needs. --dataplane is an address on every
// command; the id filter of clients list/watch is --dataplane-id (an id given
// to --dataplane there still filters, with a deprecation note).
//
// An address off loopback needs --tls-cert, --tls-key and --tls-ca (or
// $FOUROVER6_TLS_*): plaintext there is refused as a usage error, before
// anything is dialed. What a certificate may do is its role (see pki.go and
// controlplane/authz).
//
// # Exit codes
//
//	0  success
//	1  other error
//	2  bad arguments or flags (unknown flag/command, invalid ADDR, bad -o, malformed apply file)
//	3  daemon unreachable (status: neither daemon answered)
//	4  not found (gRPC NOT_FOUND; clients get/kick, reservations delete, dataplane drain/remove)
//	5  permission denied (gRPC PERMISSION_DENIED: this caller's role may not do that)
//	6  check found a problem
//
// Messages never show gRPC code names or its wrapping (errors.go), and add
// a hint for TLS on one side only and for a socket that needs root or its
// group.
//
// # JSON output
//
// -o json and -o yaml print the same keys; clients watch prints JSON Lines
// (one event per line) or YAML documents separated by "---". The schema is
// stable: keys are only ever added, never renamed or removed, and every key is
// always present (except version's controller_error). Times are RFC 3339 in
// UTC with whole seconds, "" when unknown; durations are Go duration strings;
// counters and sizes are integers. Errors go to stderr in the -o format:
// {"error":"...","code":3}.
//
// The Go types in schema.go define the output; README.md documents every
// object and the apply file format.
package main
