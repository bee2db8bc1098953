package session

import (
	"sync/atomic"

	"github.com/fourover6/fourover6/dataplane/packet"
	"github.com/fourover6/fourover6/dataplane/policy"
)

// Drop is a reason a message or packet was dropped.
type Drop uint8

// Drop reasons. Their names are stable: they appear in status output,
// logs and metrics.
const (
	DropFrameError     Drop = iota // length field out of range: connection closed
	DropUnknownType                // skipped by length
	DropUnexpectedType             // a server-to-client type (101, 103) sent by a client
	DropBeforeLease                // 102 before the 101 was sent
	DropSpoofedSource              // 102 whose source is not the leased address
	DropIPv4TooShort
	DropIPv4BadVersion
	DropIPv4BadHeaderLen
	DropIPv4BadTotalLen
	DropSendQueueFull  // 103 or 104 for a client whose send queue is full
	DropSendQueueDelay // 103 that waited too long in the client's send queue (CoDel, or past its delay bound)
	DropNoRoute        // packet from the TUN for an address no session holds
	DropTUNNotIPv4     // packet from the TUN that is not IPv4
	DropTUNWriteError  // the kernel refused a 102's packet

	// A 102 whose destination the policy refuses (see package policy).
	DropPolicyHost        // the data-plane host's own addresses
	DropPolicyClient      // another client
	DropPolicyLinkLocal   // 169.254.0.0/16
	DropPolicyBroadcast   // a broadcast address
	DropPolicyMulticast   // 224.0.0.0/4
	DropPolicyLoopback    // 127.0.0.0/8
	DropPolicyUnspecified // 0.0.0.0/8
	DropPolicyReserved    // 240.0.0.0/4
	DropPolicyDenied      // an operator's deny prefix
	NumDrops
)

var dropNames = [NumDrops]string{
	DropFrameError:       "frame_error",
	DropUnknownType:      "unknown_type",
	DropUnexpectedType:   "unexpected_type",
	DropBeforeLease:      "data_before_lease",
	DropSpoofedSource:    "spoofed_source",
	DropIPv4TooShort:     "ipv4_too_short",
	DropIPv4BadVersion:   "ipv4_bad_version",
	DropIPv4BadHeaderLen: "ipv4_bad_header_len",
	DropIPv4BadTotalLen:  "ipv4_bad_total_len",
	DropSendQueueFull:    "send_queue_full",
	DropSendQueueDelay:   "send_queue_delay",
	DropNoRoute:          "no_route",
	DropTUNNotIPv4:       "tun_not_ipv4",
	DropTUNWriteError:    "tun_write_error",

	DropPolicyHost:        "policy_host",
	DropPolicyClient:      "policy_client",
	DropPolicyLinkLocal:   "policy_link_local",
	DropPolicyBroadcast:   "policy_broadcast",
	DropPolicyMulticast:   "policy_multicast",
	DropPolicyLoopback:    "policy_loopback",
	DropPolicyUnspecified: "policy_unspecified",
	DropPolicyReserved:    "policy_reserved",
	DropPolicyDenied:      "policy_denied",
}

// byPolicy reports whether d is a destination the policy refused.
func (d Drop) byPolicy() bool { return d >= DropPolicyHost && d <= DropPolicyDenied }

// Session.drop logs the first drop of each reason in a 32-bit set.
var _ [32 - NumDrops]struct{}

// policyDrops maps the policy's reasons to drop reasons.
var policyDrops = [policy.NumReasons]Drop{
	policy.ToHost:        DropPolicyHost,
	policy.ToClient:      DropPolicyClient,
	policy.ToLinkLocal:   DropPolicyLinkLocal,
	policy.ToBroadcast:   DropPolicyBroadcast,
	policy.ToMulticast:   DropPolicyMulticast,
	policy.ToLoopback:    DropPolicyLoopback,
	policy.ToUnspecified: DropPolicyUnspecified,
	policy.ToReserved:    DropPolicyReserved,
	policy.Denied:        DropPolicyDenied,
}

func (d Drop) String() string {
	if d < NumDrops {
		return dropNames[d]
	}
	return "unknown"
}

// dropFor maps an IPv4 check failure to its drop reason.
func dropFor(p packet.Problem) Drop {
	switch p {
	case packet.TooShort:
		return DropIPv4TooShort
	case packet.NotIPv4:
		return DropIPv4BadVersion
	case packet.BadHeaderLen:
		return DropIPv4BadHeaderLen
	default:
		return DropIPv4BadTotalLen
	}
}

// Drops counts drops by reason. One instance is shared by all sessions of a
// data plane; drops are rare, so the shared counters are not a hot spot.
type Drops struct {
	n [NumDrops]atomic.Uint64
}

// Add counts one drop.
func (d *Drops) Add(r Drop) { d.n[r].Add(1) }

// Get returns the count for one reason.
func (d *Drops) Get(r Drop) uint64 { return d.n[r].Load() }

// Map returns the non-zero counters by name.
func (d *Drops) Map() map[string]uint64 {
	m := make(map[string]uint64)
	for i := range d.n {
		if v := d.n[i].Load(); v > 0 {
			m[Drop(i).String()] = v
		}
	}
	return m
}

// Traffic are traffic totals. From-client is 102 traffic, to-client is 103;
// bytes are IPv4 packet bytes (without the 5-byte header).
type Traffic struct {
	BytesFromClient, PacketsFromClient uint64
	BytesToClient, PacketsToClient     uint64
}

// Add sums two counters.
func (c Traffic) Add(o Traffic) Traffic {
	return Traffic{
		BytesFromClient:   c.BytesFromClient + o.BytesFromClient,
		PacketsFromClient: c.PacketsFromClient + o.PacketsFromClient,
		BytesToClient:     c.BytesToClient + o.BytesToClient,
		PacketsToClient:   c.PacketsToClient + o.PacketsToClient,
	}
}

// counters are a session's live from-client counters, written by its
// reader goroutine; the to-client pair is its send queue's (sendq.Queue.Sent).
type counters struct {
	bytesFrom, pktsFrom atomic.Uint64
}

func (c *counters) snapshot() Traffic {
	return Traffic{BytesFromClient: c.bytesFrom.Load(), PacketsFromClient: c.pktsFrom.Load()}
}
