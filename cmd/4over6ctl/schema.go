package main

// The types in this file are the stable -o json / -o yaml output of
// 4over6ctl (see the package documentation and README.md, "JSON output").
// Keys are only ever added, never renamed or removed; every key listed is
// always present (except controller_error of version). Times are RFC 3339
// in UTC ("" when unknown), durations are Go duration strings ("20s"),
// counters are integers.

// Counters are traffic totals. "from client" is client-to-IPv4 traffic (102
// messages), "to client" is IPv4-to-client traffic (103 messages). They are
// flattened into the objects that embed them.
type Counters struct {
	BytesFromClient   uint64 `json:"bytes_from_client" yaml:"bytes_from_client"`
	PacketsFromClient uint64 `json:"packets_from_client" yaml:"packets_from_client"`
	BytesToClient     uint64 `json:"bytes_to_client" yaml:"bytes_to_client"`
	PacketsToClient   uint64 `json:"packets_to_client" yaml:"packets_to_client"`
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
}

// Pool is the object printed by "pool show".
type Pool struct {
	Prefix     string   `json:"prefix" yaml:"prefix"`           // "13.8.0.0/24"
	Gateway    string   `json:"gateway" yaml:"gateway"`         // data planes' TUN address
	RangeFirst string   `json:"range_first" yaml:"range_first"` // first client address
	RangeLast  string   `json:"range_last" yaml:"range_last"`   // last client address
	Size       uint32   `json:"size" yaml:"size"`               // client addresses in the range
	Leased     uint32   `json:"leased" yaml:"leased"`
	Free       uint32   `json:"free" yaml:"free"`
	Reserved   uint32   `json:"reserved" yaml:"reserved"`
	Route      string   `json:"route" yaml:"route"` // route field of 101; "0.0.0.0" = default route
	DNS        []string `json:"dns" yaml:"dns"`     // the three DNS servers of 101
}

// Status is the object printed by "status" (one data plane).
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
}
