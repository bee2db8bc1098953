package main

// Connections to the daemons. Each daemon is a ctlclient.Conn, the client
// the data plane uses too: with several controller addresses
// (--controller a,b,c or FOUROVER6_CONTROLLER=a,b,c) it asks them all which
// one leads and follows the leader, retrying a request there and replaying
// a stream whose first receive failed (see controlplane/ctlclient). Its
// errors are typed; rpcError (root.go) turns them into one-line messages
// and exit codes. The commands use nothing else.

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"google.golang.org/grpc"

	"github.com/fourover6/fourover6/cmd/internal/tlsconf"
	"github.com/fourover6/fourover6/controlplane/ctlclient"
	"github.com/fourover6/fourover6/controlplane/endpoint"
)

// maxProbeTimeout bounds the leadership question asked of each of several
// controller addresses (--timeout, when shorter, wins).
const maxProbeTimeout = ctlclient.DefaultProbeTimeout

// daemon is one gRPC server the CLI may talk to, possibly at one of several
// addresses.
type daemon struct {
	name   string // "controller" or "dataplane"; also the flag name
	envVar string
	def    string
	multi  bool // several comma-separated addresses allowed

	flagValue string // bound to --<name>
	tls       *tlsconf.Files

	// Set by connect.
	addr         string // as resolved, before parsing
	source       string // where addr came from: "--controller", "$FOUROVER6_CONTROLLER", "default"
	eps          []endpoint.Endpoint
	probeTimeout time.Duration

	mu   sync.Mutex
	conn *ctlclient.Conn // made by the first request
}

var _ grpc.ClientConnInterface = (*daemon)(nil)

// client returns the connection, making it on first use. A TLS file that
// cannot be read is a usage error.
func (d *daemon) client() (*ctlclient.Conn, error) {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		return d.conn, nil
	}
	opts, err := dialOptions(d.tls)
	if err != nil {
		return nil, err
	}
	conn, err := ctlclient.Dial(d.eps, ctlclient.WithDialOptions(opts...), ctlclient.WithProbeTimeout(d.probeTimeout))
	if err != nil {
		return nil, &cliError{code: exitError, msg: fmt.Sprintf("%s at %s: %v", d.name, d.addressText(), err)}
	}
	d.conn = conn
	return conn, nil
}

func (d *daemon) current() *ctlclient.Conn {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.conn
}

// addressText is the address for messages: the one the last request went
// to, else the only one, else the whole list.
func (d *daemon) addressText() string {
	if c := d.current(); c != nil {
		if ep, ok := c.Current(); ok {
			return ep.String()
		}
	}
	parts := make([]string, len(d.eps))
	for i, ep := range d.eps {
		parts[i] = ep.String()
	}
	return strings.Join(parts, ",")
}

// connected reports whether a connection to the address in use is up.
func (d *daemon) connected() bool {
	c := d.current()
	return c != nil && c.Connected()
}

func (d *daemon) close() {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.conn != nil {
		_ = d.conn.Close()
		d.conn = nil
	}
}

// Invoke implements grpc.ClientConnInterface.
func (d *daemon) Invoke(ctx context.Context, method string, args, reply any, opts ...grpc.CallOption) error {
	c, err := d.client()
	if err != nil {
		return err
	}
	return c.Invoke(ctx, method, args, reply, opts...)
}

// NewStream implements grpc.ClientConnInterface.
func (d *daemon) NewStream(ctx context.Context, desc *grpc.StreamDesc, method string, opts ...grpc.CallOption) (grpc.ClientStream, error) {
	c, err := d.client()
	if err != nil {
		return nil, err
	}
	return c.NewStream(ctx, desc, method, opts...)
}
