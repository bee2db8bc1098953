package main

// The types in this file are the stable -o json / -o yaml output of
// 4over6ctl (see the package documentation and README.md, "JSON output").
// Keys are only ever added, never renamed or removed; every key listed is
// always present (except controller_error of version). Times are RFC 3339
// in UTC ("" when unknown), durations are Go duration strings ("20s"),
// counters are integers.

import "github.com/fourover6/fourover6/cmd/internal/version"

// Counters are traffic totals. "from client" is client-to-IPv4 traffic (102
// messages), "to client" is IPv4-to-client traffic (103 messages). They are
// flattened into the objects that embed them.
type Counters struct {
	BytesFromClient   uint64 `json:"bytes_from_client" yaml:"bytes_from_client"`
	PacketsFromClient uint64 `json:"packets_from_client" yaml:"packets_from_client"`
	BytesToClient     uint64 `json:"bytes_to_client" yaml:"bytes_to_client"`
	PacketsToClient   uint64 `json:"packets_to_client" yaml:"packets_to_client"`
}

// Rates are current traffic per second each way: the growth of a client's
// counters between its data plane's last two reports (every
// --report-interval, 5s by default), 0 until two reports arrived. Flattened
// into the objects that embed them.
type Rates struct {
	BytesFromClientPerSecond   float64 `json:"bytes_from_client_per_second" yaml:"bytes_from_client_per_second"`
	PacketsFromClientPerSecond float64 `json:"packets_from_client_per_second" yaml:"packets_from_client_per_second"`
	BytesToClientPerSecond     float64 `json:"bytes_to_client_per_second" yaml:"bytes_to_client_per_second"`
	PacketsToClientPerSecond   float64 `json:"packets_to_client_per_second" yaml:"packets_to_client_per_second"`
}

// Client is one client of the controller's client table: an element of the
// array printed by "clients list", the object printed by "clients get".
type Client struct {
	IPv4           string `json:"ipv4" yaml:"ipv4"`                       // leased address, "13.8.0.2"
	IPv6           string `json:"ipv6" yaml:"ipv6"`                       // client's IPv6 address
	Port           uint32 `json:"port" yaml:"port"`                       // client's TCP source port
	Dataplane      string `json:"dataplane" yaml:"dataplane"`             // data plane id
	Session        string `json:"session" yaml:"session"`                 // session id on that data plane
	ConnectedSince string `json:"connected_since" yaml:"connected_since"` // RFC 3339 UTC
	LastHeard      string `json:"last_heard" yaml:"last_heard"`           // RFC 3339 UTC
	Counters       `yaml:",inline"`
	// The address is the one this IPv6 address held last, given back to
	// it when it returned (sticky addresses).
	Sticky bool `json:"sticky" yaml:"sticky"`
	Rates  `yaml:",inline"`
}

// CaptureSummary is the object "clients capture" prints to stderr when the
// capture ends (standard output may hold the capture itself).
type CaptureSummary struct {
	IPv4       string `json:"ipv4" yaml:"ipv4"`           // the client captured
	Dataplane  string `json:"dataplane" yaml:"dataplane"` // the data plane that captured it
	Session    string `json:"session" yaml:"session"`
	File       string `json:"file" yaml:"file"`     // -w, "-" for standard output
	Format     string `json:"format" yaml:"format"` // "pcapng" or "pcap"
	Captured   uint64 `json:"captured" yaml:"captured"`
	FromClient uint64 `json:"from_client" yaml:"from_client"` // of captured: 102s
	ToClient   uint64 `json:"to_client" yaml:"to_client"`     // of captured: 103s
	Dropped    uint64 `json:"dropped" yaml:"dropped"`         // of captured: dropped by the data plane
	// Packets the capture lost because this reader was too slow (the
	// client's traffic went on).
	Lost uint64 `json:"lost" yaml:"lost"`
	// "count", "duration", "disconnected" (the client left), "shutdown"
	// (the data plane stopped), "handoff" (the client went on in a new
	// data plane process), "interrupted" (Ctrl-C), "reader_closed"
	// (standard output was closed).
	Ended     string `json:"ended" yaml:"ended"`
	StartedAt string `json:"started_at" yaml:"started_at"`
	EndedAt   string `json:"ended_at" yaml:"ended_at"`
}

// Pool is the object printed by "pool show".
type Pool struct {
	Prefix     string `json:"prefix" yaml:"prefix"`           // "13.8.0.0/24"
	Gateway    string `json:"gateway" yaml:"gateway"`         // data planes' TUN address
	RangeFirst string `json:"range_first" yaml:"range_first"` // first client address
	RangeLast  string `json:"range_last" yaml:"range_last"`   // last client address
	Size       uint32 `json:"size" yaml:"size"`               // client addresses in the range
	Leased     uint32 `json:"leased" yaml:"leased"`
	Free       uint32 `json:"free" yaml:"free"` // neither leased nor reserved
	// Every reservation whose address is in the range, in use or not;
	// reserved_in_use of them are leased (and counted in leased too):
	// size = leased + free + reserved - reserved_in_use.
	Reserved uint32   `json:"reserved" yaml:"reserved"`
	Route    string   `json:"route" yaml:"route"` // route field of 101; "0.0.0.0" = default route
	DNS      []string `json:"dns" yaml:"dns"`     // the three DNS servers of 101
	// Of free: remembered for their last holder (a returning client gets
	// its own back), and not (never used, or the holder is forgotten).
	FreeRemembered   uint32 `json:"free_remembered" yaml:"free_remembered"`
	FreeUnremembered uint32 `json:"free_unremembered" yaml:"free_unremembered"`
	ReservedInUse    uint32 `json:"reserved_in_use" yaml:"reserved_in_use"`
}

// Status is the object printed by "dataplane status" (one data plane), and
// the "dataplane" object of "status".
type Status struct {
	Dataplane           string            `json:"dataplane" yaml:"dataplane"` // data plane id
	Version             string            `json:"version" yaml:"version"`
	ClientListen        string            `json:"client_listen" yaml:"client_listen"` // "[::]:5678"
	TUN                 string            `json:"tun" yaml:"tun"`                     // interface name
	MTU                 uint32            `json:"mtu" yaml:"mtu"`
	Gateway             string            `json:"gateway" yaml:"gateway"` // TUN address
	Pool                string            `json:"pool" yaml:"pool"`       // pool prefix
	Controller          string            `json:"controller" yaml:"controller"`
	ControllerConnected bool              `json:"controller_connected" yaml:"controller_connected"`
	StartedAt           string            `json:"started_at" yaml:"started_at"` // RFC 3339 UTC
	Sessions            uint32            `json:"sessions" yaml:"sessions"`     // open connections
	LeasedSessions      uint32            `json:"leased_sessions" yaml:"leased_sessions"`
	AcceptedTotal       uint64            `json:"accepted_total" yaml:"accepted_total"`
	ClosedTotal         uint64            `json:"closed_total" yaml:"closed_total"`
	Counters            `yaml:",inline"`  // totals of all sessions
	Drops               map[string]uint64 `json:"drops" yaml:"drops"`                           // reason -> count; {} when none
	KeepaliveInterval   string            `json:"keepalive_interval" yaml:"keepalive_interval"` // "20s"
	KeepaliveTimeout    string            `json:"keepalive_timeout" yaml:"keepalive_timeout"`   // "1m0s"
	// Added after the first release; scripts may meet either.
	Draining   bool              `json:"draining" yaml:"draining"`       // accepting no new clients
	InstanceID string            `json:"instance_id" yaml:"instance_id"` // random per process start
	Goroutines uint32            `json:"goroutines" yaml:"goroutines"`
	OpenFDs    uint32            `json:"open_fds" yaml:"open_fds"`
	Refused    map[string]uint64 `json:"refused" yaml:"refused"` // limit -> connections refused; {} when none
	Limits     Limits            `json:"limits" yaml:"limits"`
	BGP        BGP               `json:"bgp" yaml:"bgp"`
	// The process serving now: a live hand-off (dataplane upgrade) changes
	// it, not the instance.
	PID              uint32 `json:"pid" yaml:"pid"`
	ProcessStartedAt string `json:"process_started_at" yaml:"process_started_at"` // RFC 3339 UTC
	HandoffsTotal    uint64 `json:"handoffs_total" yaml:"handoffs_total"`
}

// DataplaneUpgrade is the object printed by "dataplane upgrade": the
// process that handed over and the one that serves now.
type DataplaneUpgrade struct {
	OldPID     uint32 `json:"old_pid" yaml:"old_pid"`
	NewPID     uint32 `json:"new_pid" yaml:"new_pid"`
	OldVersion string `json:"old_version" yaml:"old_version"`
	NewVersion string `json:"new_version" yaml:"new_version"` // "" when the new process did not answer in time
	Sessions   uint32 `json:"sessions" yaml:"sessions"`       // handed over
	TookMs     uint64 `json:"took_ms" yaml:"took_ms"`         // new process start to take-over
	PausedMs   uint64 `json:"paused_ms" yaml:"paused_ms"`     // clients' traffic frozen
}

// BGP is the data plane's BGP speaker, the "bgp" object of "dataplane
// status": enabled false (every other key zero, sessions []) when the
// data plane runs without --bgp-asn.
type BGP struct {
	Enabled         bool   `json:"enabled" yaml:"enabled"`
	ASN             uint32 `json:"asn" yaml:"asn"`
	RouterID        string `json:"router_id" yaml:"router_id"`
	NextHop         string `json:"next_hop" yaml:"next_hop"`                 // "": each session's local address
	HoldTime        string `json:"hold_time" yaml:"hold_time"`               // proposed, "1m30s"; "0s": none
	GracefulRestart string `json:"graceful_restart" yaml:"graceful_restart"` // restart time, "30s"; "0s": off
	Announced       uint32 `json:"announced" yaml:"announced"`               // client /32s in the table
	Aggregate       string `json:"aggregate" yaml:"aggregate"`               // the pool, "" when not announced
	Pending         uint32 `json:"pending" yaml:"pending"`                   // route changes not yet in the table
	FailedTotal     uint64 `json:"failed_total" yaml:"failed_total"`         // route changes refused
	// One per --bgp-peer, in configuration order; [] when BGP is off.
	Sessions []BGPSession `json:"sessions" yaml:"sessions"`
}

// BGPSession is one BGP peer of the data plane and its session.
type BGPSession struct {
	Peer     string `json:"peer" yaml:"peer"` // the peer's address
	PeerPort uint32 `json:"peer_port" yaml:"peer_port"`
	PeerASN  uint32 `json:"peer_asn" yaml:"peer_asn"`
	// "idle", "connect", "active", "opensent", "openconfirm", "established".
	State            string `json:"state" yaml:"state"`
	EstablishedSince string `json:"established_since" yaml:"established_since"` // RFC 3339 UTC, "" unless established
	Uptime           string `json:"uptime" yaml:"uptime"`                       // "5m3s"; "0s" unless established
	PrefixesSent     uint64 `json:"prefixes_sent" yaml:"prefixes_sent"`
	PrefixesReceived uint64 `json:"prefixes_received" yaml:"prefixes_received"` // all dropped: the data plane imports nothing
	LocalAddress     string `json:"local_address" yaml:"local_address"`         // our end: the default next hop
	RouterID         string `json:"router_id" yaml:"router_id"`                 // the peer's
	Flaps            uint32 `json:"flaps" yaml:"flaps"`
	GracefulRestart  bool   `json:"graceful_restart" yaml:"graceful_restart"` // negotiated with the peer
	LastError        string `json:"last_error" yaml:"last_error"`             // why it last went down, "" if never
}

// Session is one element of the array printed by "sessions list": one
// client connection on the data plane, leased or not.
type Session struct {
	IPv4           string `json:"ipv4" yaml:"ipv4"` // "" until leased
	IPv6           string `json:"ipv6" yaml:"ipv6"`
	Port           uint32 `json:"port" yaml:"port"`
	Session        string `json:"session" yaml:"session"`
	Dataplane      string `json:"dataplane" yaml:"dataplane"` // data plane id
	State          string `json:"state" yaml:"state"`         // "accepted", "leased", "closing" ("unknown")
	ConnectedSince string `json:"connected_since" yaml:"connected_since"`
	LastHeard      string `json:"last_heard" yaml:"last_heard"`
	Counters       `yaml:",inline"`
	SendQueue      uint32 `json:"send_queue" yaml:"send_queue"` // messages waiting to be sent
}

// Version is the object printed by "version".
type Version struct {
	Client            string `json:"client" yaml:"client"`         // this 4over6ctl
	Controller        string `json:"controller" yaml:"controller"` // "" when it could not be asked
	ControllerAddress string `json:"controller_address" yaml:"controller_address"`
	// Why the controller's version is missing; absent when it is known.
	ControllerError string `json:"controller_error,omitempty" yaml:"controller_error,omitempty"`
	// This 4over6ctl's build: version, commit, go_version, build_date
	// (RFC 3339), platform; "" when unknown.
	Build version.Info `json:"build" yaml:"build"`
}

// Limits are a data plane's connection limits (0: unlimited), in "dataplane
// status".
type Limits struct {
	MaxClients        uint32  `json:"max_clients" yaml:"max_clients"`
	MaxConnsPerIP     uint32  `json:"max_conns_per_ip" yaml:"max_conns_per_ip"`
	MaxConnsPerPrefix uint32  `json:"max_conns_per_prefix" yaml:"max_conns_per_prefix"`
	PrefixLength      uint32  `json:"prefix_length" yaml:"prefix_length"`
	AcceptRate        float64 `json:"accept_rate" yaml:"accept_rate"` // connections per second
	AcceptBurst       uint32  `json:"accept_burst" yaml:"accept_burst"`
}

// Kick is the object printed by "clients kick ADDR".
type Kick struct {
	IPv4      string `json:"ipv4" yaml:"ipv4"`           // the address kicked
	Dataplane string `json:"dataplane" yaml:"dataplane"` // the data plane that closed the client
	Session   string `json:"session" yaml:"session"`     // the session it closed
}

// SessionKick is the object printed by "sessions kick ADDR|SESSION".
type SessionKick struct {
	IPv4    string `json:"ipv4" yaml:"ipv4"` // "" when the session had no address
	Session string `json:"session" yaml:"session"`
}

// ClientEvent is one line of "clients watch -o json" (JSON Lines) or one
// document of "clients watch -o yaml".
type ClientEvent struct {
	// "existing" (part of the current set), "synced" (the current set is
	// complete), "connected", "disconnected" ("unknown" from a newer
	// controller).
	Type   string  `json:"type" yaml:"type"`
	Time   string  `json:"time" yaml:"time"`     // RFC 3339 UTC, "" when unknown
	Client *Client `json:"client" yaml:"client"` // null for "synced"
	Reason string  `json:"reason" yaml:"reason"` // why it disconnected, else ""
}

// PoolRangeChange is the object printed by "pool set-range".
type PoolRangeChange struct {
	Changed       bool   `json:"changed" yaml:"changed"`
	PreviousRange string `json:"previous_range" yaml:"previous_range"` // "13.8.0.2-13.8.0.254"
	Pool          Pool   `json:"pool" yaml:"pool"`                     // the pool afterwards
}

// Reservation binds a client IPv6 address or prefix to a fixed IPv4
// address: an element of "reservations list".
type Reservation struct {
	Client string `json:"client" yaml:"client"` // "fd00:46::2" or "fd00:47::/64"
	IPv4   string `json:"ipv4" yaml:"ipv4"`
}

// ReservationStatus is an element of "reservations list": a reservation
// and whether its address is leased now.
type ReservationStatus struct {
	Reservation `yaml:",inline"`
	InUse       bool               `json:"in_use" yaml:"in_use"` // a client holds the address now
	Holder      *ReservationHolder `json:"holder" yaml:"holder"` // that client; null when idle
}

// ReservationHolder is the client holding a reserved address.
type ReservationHolder struct {
	IPv6      string `json:"ipv6" yaml:"ipv6"`
	Port      uint32 `json:"port" yaml:"port"`
	Dataplane string `json:"dataplane" yaml:"dataplane"` // data plane id
	Session   string `json:"session" yaml:"session"`
}

// ReservationSet is the object printed by "reservations set".
type ReservationSet struct {
	Reservation `yaml:",inline"`
	Changed     bool `json:"changed" yaml:"changed"` // false: the same binding existed
}

// ReservationDelete is the object printed by "reservations delete".
type ReservationDelete struct {
	Client  string `json:"client" yaml:"client"`
	Deleted bool   `json:"deleted" yaml:"deleted"` // always true (exit 4 otherwise)
}

// DNS is the object printed by "dns show".
type DNS struct {
	Servers []string `json:"servers" yaml:"servers"`
}

// DNSSet is the object printed by "dns set".
type DNSSet struct {
	Servers  []string `json:"servers" yaml:"servers"`   // as the controller keeps them (padded to three)
	Previous []string `json:"previous" yaml:"previous"` // before the change
	Changed  bool     `json:"changed" yaml:"changed"`
}

// Dataplane is one registered data plane, as the controller knows it: an
// element of "dataplanes list" and of status's "dataplanes", the object
// printed by "dataplane drain".
type Dataplane struct {
	ID            string `json:"id" yaml:"id"`
	InstanceID    string `json:"instance_id" yaml:"instance_id"` // random per process start
	Version       string `json:"version" yaml:"version"`
	ClientListen  string `json:"client_listen" yaml:"client_listen"` // where clients connect
	APIAddress    string `json:"api_address" yaml:"api_address"`     // its gRPC API (--dataplane)
	State         string `json:"state" yaml:"state"`                 // "up", "draining", "down", "stopped" ("unknown")
	Sessions      uint32 `json:"sessions" yaml:"sessions"`
	Leases        uint32 `json:"leases" yaml:"leases"` // leases the controller holds for it
	RegisteredAt  string `json:"registered_at" yaml:"registered_at"`
	LastHeartbeat string `json:"last_heartbeat" yaml:"last_heartbeat"`
}

// DataplaneRemove is the object printed by "dataplane remove".
type DataplaneRemove struct {
	ID        string    `json:"id" yaml:"id"`
	Released  uint32    `json:"released" yaml:"released"`   // leases released
	Forced    bool      `json:"forced" yaml:"forced"`       // it was up: removed by --force
	Dataplane Dataplane `json:"dataplane" yaml:"dataplane"` // as it was before
}

// LogLevel is the object printed by "log-level" and "dataplane log-level".
type LogLevel struct {
	Daemon   string `json:"daemon" yaml:"daemon"`   // "controller" or "dataplane"
	Address  string `json:"address" yaml:"address"` // the daemon's address
	Level    string `json:"level" yaml:"level"`     // the new level
	Previous string `json:"previous" yaml:"previous"`
}

// ControllerStatus is the "controller" object of "status".
type ControllerStatus struct {
	Address   string `json:"address" yaml:"address"` // where it answered
	ID        string `json:"id" yaml:"id"`
	Version   string `json:"version" yaml:"version"`
	Store     string `json:"store" yaml:"store"` // "bbolt:/var/lib/fourover6/controller.db"
	Leader    bool   `json:"leader" yaml:"leader"`
	LeaderID  string `json:"leader_id" yaml:"leader_id"`
	StartedAt string `json:"started_at" yaml:"started_at"`
	// Why the store is failing (its last write failed); "" while it works.
	StoreError string `json:"store_error" yaml:"store_error"`
}

// SystemStatus is the object printed by "status": every part is null (or
// dataplanes null) when it could not be fetched, and errors says why.
type SystemStatus struct {
	Controller *ControllerStatus `json:"controller" yaml:"controller"`
	Pool       *Pool             `json:"pool" yaml:"pool"`
	Dataplanes DataplaneList     `json:"dataplanes" yaml:"dataplanes"` // null when not fetched, [] when none
	Dataplane  *Status           `json:"dataplane" yaml:"dataplane"`   // the local data plane (--dataplane)
	Errors     []StatusError     `json:"errors" yaml:"errors"`         // [] when everything answered
}

// DataplaneList is a list of data planes that stays null in YAML when nil
// (yaml.v3 would print a nil slice as []), as it does in JSON.
type DataplaneList []Dataplane

// MarshalYAML implements yaml.Marshaler.
func (l DataplaneList) MarshalYAML() (any, error) {
	if l == nil {
		return nil, nil
	}
	return []Dataplane(l), nil
}

// StatusError is one failure in "status".
type StatusError struct {
	Daemon  string `json:"daemon" yaml:"daemon"`   // "controller" or "dataplane"
	Address string `json:"address" yaml:"address"` // the address(es) tried
	Error   string `json:"error" yaml:"error"`
	Code    int    `json:"code" yaml:"code"` // the exit code it alone would give
}

// ApplyResult is the object printed by "apply".
type ApplyResult struct {
	File    string   `json:"file" yaml:"file"`
	DryRun  bool     `json:"dry_run" yaml:"dry_run"` // true: nothing was changed
	Changes []Change `json:"changes" yaml:"changes"` // [] when there was nothing to do
}

// Change is one difference between the file and the controller.
type Change struct {
	Kind   string `json:"kind" yaml:"kind"`     // "pool", "dns" or "reservation"
	Key    string `json:"key" yaml:"key"`       // "range", "servers" or the reservation's client
	Action string `json:"action" yaml:"action"` // "create", "update" or "delete"
	From   string `json:"from" yaml:"from"`     // "" for create
	To     string `json:"to" yaml:"to"`         // "" for delete
}

// Check is the object printed by "check".
type Check struct {
	OK bool `json:"ok" yaml:"ok"` // no problem found (exit 0; else exit 6)
	// "controller ctl-a leads, store ok, 2 of 2 data planes up, ..." when
	// OK, else "N problems".
	Summary    string         `json:"summary" yaml:"summary"`
	Controller string         `json:"controller" yaml:"controller"` // the address that answered, "" when none did
	Problems   []CheckProblem `json:"problems" yaml:"problems"`     // [] when OK
}

// CheckProblem is one thing "check" found wrong.
type CheckProblem struct {
	// "controller" (unreachable), "leader" (none, or not this one),
	// "store", "dataplane", "pool".
	Check   string `json:"check" yaml:"check"`
	Subject string `json:"subject" yaml:"subject"` // the data plane's id, the pool's prefix, the store; "" otherwise
	Message string `json:"message" yaml:"message"`
}

// Export is the object printed by "export": a file "apply -f" takes.
type Export struct {
	Pool         ExportPool    `json:"pool" yaml:"pool"`
	DNS          []string      `json:"dns" yaml:"dns"`
	Reservations []Reservation `json:"reservations" yaml:"reservations"` // [] when none
	Prune        bool          `json:"prune" yaml:"prune"`               // always true: the list is complete
}

// ExportPool is the pool part of "export".
type ExportPool struct {
	Range string `json:"range" yaml:"range"` // "13.8.0.2-13.8.0.128"
}
