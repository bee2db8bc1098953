package session

// Cause is why a session closed, as a stable name: logs print it, the data
// plane counts closes by it.
type Cause uint8

// Causes. Their names are stable (logs, counters).
const (
	CauseUnknown            Cause = iota
	CauseClientClosed             // the client closed the connection
	CauseClientTruncated          // ... in the middle of a message
	CauseReset                    // the connection was reset (or the pipe broke)
	CauseFrameError               // a length field out of range: the stream cannot be trusted
	CauseReadError                // another read error
	CauseWriteError               // another write error
	CauseWriteTimeout             // the client stopped reading: a write blocked for the write timeout
	CauseClosed                   // the connection was closed under a reader or writer (by another Close)
	CauseNoAddrRequest            // no 100 within the keepalive timeout
	CauseKeepaliveTimeout         // silent for longer than the keepalive timeout
	CauseNoAddress                // the controller gave no address
	CauseClosedWhileLeasing       // closed while the controller was answering (a release reason only)
	CauseAddressConflict          // its address was leased to another session
	CauseKicked                   // an operator or the controller asked
	CauseShutdown                 // the data plane is shutting down
	CauseLeaseLimit               // the controller refused a lease: the client's address or prefix holds its limit
	NumCauses
)

var causes = [NumCauses]struct{ name, text string }{
	CauseUnknown:            {"unknown", ""},
	CauseClientClosed:       {"client_closed", "client closed the connection"},
	CauseClientTruncated:    {"client_closed_mid_message", "client closed the connection inside a message"},
	CauseReset:              {"connection_reset", "connection reset by client"},
	CauseFrameError:         {"frame_error", "framing error"},
	CauseReadError:          {"read_error", "read error"},
	CauseWriteError:         {"write_error", "write error"},
	CauseWriteTimeout:       {"client_stopped_reading", "client stopped reading"},
	CauseClosed:             {"closed", "closed"},
	CauseNoAddrRequest:      {"no_address_request", "no address request (100)"},
	CauseKeepaliveTimeout:   {"keepalive_timeout", "keepalive timeout"},
	CauseNoAddress:          {"no_address", "no address"},
	CauseClosedWhileLeasing: {"closed_while_leasing", "closed while leasing"},
	CauseAddressConflict:    {"address_conflict", "address conflict"},
	CauseKicked:             {"kicked", "kicked by operator"},
	CauseShutdown:           {"shutdown", "data plane shutting down"},
	CauseLeaseLimit:         {"lease_limit", "lease limit"},
}

func (c Cause) String() string {
	if c < NumCauses {
		return causes[c].name
	}
	return "unknown"
}

// Reason is why a session closed: a Cause and, where there is more to say,
// a detail ("silent for more than 1m0s", the controller's error, the
// operator's words).
type Reason struct {
	Cause  Cause
	Detail string
}

// String is the reason as a person reads it, e.g. "keepalive timeout:
// silent for more than 1m0s": what the controller is told on release. A
// kick's detail (the operator's words) stands alone.
func (r Reason) String() string {
	text := ""
	if r.Cause < NumCauses {
		text = causes[r.Cause].text
	}
	switch {
	case r.Detail == "":
		if text == "" {
			return r.Cause.String()
		}
		return text
	case text == "" || r.Cause == CauseKicked:
		return r.Detail
	}
	return text + ": " + r.Detail
}

// IsZero reports whether r is no reason at all (a session still open).
func (r Reason) IsZero() bool { return r == Reason{} }
