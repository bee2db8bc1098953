package main

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	"github.com/fourover6/fourover6/cmd/internal/clidoc"
	"github.com/fourover6/fourover6/cmd/internal/tlsconf"
	"github.com/fourover6/fourover6/cmd/internal/version"
	"github.com/fourover6/fourover6/controlplane/ctlclient"
	"github.com/fourover6/fourover6/controlplane/endpoint"
	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// Exit codes. They are part of the CLI's contract: scripts rely on them.
const (
	exitOK          = 0 // success
	exitError       = 1 // any other error
	exitUsage       = 2 // bad arguments or flags
	exitUnreachable = 3 // a daemon could not be reached
	exitNotFound    = 4 // the daemon answered NOT_FOUND
	exitDenied      = 5 // the daemon answered PERMISSION_DENIED
	exitCheckFailed = 6 // check found a problem
)

const exitCodesHelp = `Exit codes:
  0  success
  1  other error (the daemon answered with an error, a timeout on an open connection, ...)
  2  bad arguments or flags (unknown flag or command, invalid ADDR, bad -o value)
  3  daemon unreachable (no socket, connection refused, connect timeout)
  4  not found (clients get/kick of an address nobody holds, reservations delete
     of a client without one, dataplane drain or remove of an unknown id)
  5  permission denied (this caller's role may not do that: a viewer changing
     something, a certificate without a role; the message names both roles)
  6  check found at least one problem (one line each)`

// Annotation key naming the daemons a command talks to (comma separated).
// The root's PersistentPreRunE dials exactly these and nothing else.
const needsAnnotation = "fourover6.io/needs"

const (
	needController = "controller"
	needDataplane  = "dataplane"
)

// app is one invocation of the CLI. Nothing is global, so tests can run many
// in parallel.
type app struct {
	stdout, stderr io.Writer
	getenv         func(string) string
	now            func() time.Time

	output  string // -o as given
	format  format // -o once validated
	timeout time.Duration

	controller *daemon
	dataplane  *daemon
	tls        tlsconf.Files // --tls-*, else $FOUROVER6_TLS_*
}

func newApp(stdout, stderr io.Writer, getenv func(string) string) *app {
	if getenv == nil {
		getenv = func(string) string { return "" }
	}
	return &app{
		stdout: stdout,
		stderr: stderr,
		getenv: getenv,
		now:    time.Now,
		controller: &daemon{
			name:   "controller",
			envVar: "FOUROVER6_CONTROLLER",
			def:    "unix:///run/fourover6/controller.sock",
			multi:  true,
		},
		dataplane: &daemon{
			name:   "dataplane",
			envVar: "FOUROVER6_DATAPLANE",
			def:    "unix:///run/fourover6/dataplane.sock",
		},
	}
}

// run is the whole CLI: it parses args, runs the command and returns the
// process exit code. Errors are printed to stderr in the -o format.
func run(args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	return runContext(ctx, args, stdout, stderr, getenv)
}

// runContext is run with a context whose end means Ctrl-C.
func runContext(ctx context.Context, args []string, stdout, stderr io.Writer, getenv func(string) string) int {
	a := newApp(stdout, stderr, getenv)
	root := a.rootCommand()
	root.SetArgs(args)
	cmd, err := root.ExecuteContextC(ctx)
	a.closeConns()
	if err == nil {
		return exitOK
	}
	ce := asCLIError(err)
	a.printError(cmd, args, ce)
	return ce.code
}

func (a *app) rootCommand() *cobra.Command {
	root := &cobra.Command{
		Use:   "4over6ctl",
		Short: "Operate a fourover6 controller and its data planes",
		Long: `4over6ctl talks gRPC to the fourover6 controller (clients, pool, reservations,
DNS, data plane registry) and to one data plane (its status and sessions).

Addresses are unix:///path/to.sock or host:port. Each is taken from its flag,
else from the environment, else the default:
  --controller  $FOUROVER6_CONTROLLER  unix:///run/fourover6/controller.sock
  --dataplane   $FOUROVER6_DATAPLANE   unix:///run/fourover6/dataplane.sock
The controller may be given as several comma-separated addresses
(--controller a,b,c): all are asked at once which one leads, and requests go
to the leader (when none leads, to the first that answers), following it
when it changes. A command connects only to the daemons it needs.

Output: -o table (default, for people), -o json or -o yaml (stable, for
scripts; see the README's "JSON output"). Errors go to stderr in the same
format: {"error":"...","code":N}.

` + exitCodesHelp,
		Example: `  4over6ctl status                             # health of the whole system
  4over6ctl clients list --dataplane-id dp1 -o json
  4over6ctl --controller unix:///run/a.sock,10.0.0.2:7000 pool show
  4over6ctl apply -f fourover6.yaml --dry-run`,
		SilenceErrors:     true,
		SilenceUsage:      true,
		Args:              noSubcommand,
		RunE:              showHelp,
		PersistentPreRunE: a.preRun,
	}
	root.SetOut(a.stdout)
	root.SetErr(a.stderr)
	root.SetFlagErrorFunc(func(_ *cobra.Command, err error) error {
		return usageError(err.Error())
	})

	pf := root.PersistentFlags()
	pf.StringVar(&a.controller.flagValue, "controller", "",
		"controller address(es), unix:///path or host:port, several comma-separated (default $FOUROVER6_CONTROLLER, else "+a.controller.def+")")
	pf.StringVar(&a.dataplane.flagValue, "dataplane", "",
		"data plane address, unix:///path or host:port (default $FOUROVER6_DATAPLANE, else "+a.dataplane.def+")")
	pf.StringVarP(&a.output, "output", "o", "table", "output format: table, json or yaml")
	pf.StringVar(&a.tls.Cert, "tls-cert", "", "client certificate (PEM) for daemons that require mutual TLS (default $FOUROVER6_TLS_CERT)")
	pf.StringVar(&a.tls.Key, "tls-key", "", "private key (PEM) of --tls-cert (default $FOUROVER6_TLS_KEY)")
	pf.StringVar(&a.tls.CA, "tls-ca", "", "CA (PEM) that signs the daemons' certificates (default $FOUROVER6_TLS_CA)")
	pf.DurationVar(&a.timeout, "timeout", 5*time.Second, "time limit for each command's requests (0: none; clients watch: the wait for the first event of each connection)")
	_ = root.RegisterFlagCompletionFunc("output", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		return formatNames, cobra.ShellCompDirectiveNoFileComp
	})

	root.AddCommand(
		a.statusCommand(),
		a.checkCommand(),
		a.clientsCommand(),
		a.poolCommand(),
		a.reservationsCommand(),
		a.dnsCommand(),
		a.dataplaneCommand(),
		a.sessionsCommand(),
		a.applyCommand(),
		a.exportCommand(),
		a.backupCommand(),
		a.logLevelCommand(),
		a.pkiCommand(),
		a.versionCommand(),
		a.docsCommand(root),
		clidoc.ManCommand(root, "1"), // hidden: the build writes the man pages with it
	)
	// cobra's completion command, made now so that an unknown shell is a
	// usage error (exit 2) like any unknown subcommand.
	root.InitDefaultCompletionCmd()
	// Its shells take no arguments; cobra's own check (NoArgs) would not
	// be a usage error.
	for _, c := range root.Commands() {
		if c.Name() == "completion" {
			c.Args, c.RunE = noSubcommand, showHelp
			c.Example = `  source <(4over6ctl completion bash)
  4over6ctl completion zsh > "${fpath[1]}/_4over6ctl"
  4over6ctl completion fish > ~/.config/fish/completions/4over6ctl.fish`
			for _, shell := range c.Commands() {
				shell.Args = noArgs
			}
		}
	}
	return root
}

// groupCommand is a command that only holds subcommands: alone it prints
// its help, with an unknown subcommand it is a usage error.
func groupCommand(use, short string, subs ...*cobra.Command) *cobra.Command {
	c := &cobra.Command{Use: use, Short: short, Args: noSubcommand, RunE: showHelp}
	c.AddCommand(subs...)
	return c
}

func showHelp(cmd *cobra.Command, _ []string) error { return cmd.Help() }

// noSubcommand rejects any positional argument of a group command (cobra
// would otherwise print the help and exit 0 for "clients bogus").
func noSubcommand(cmd *cobra.Command, args []string) error {
	if len(args) == 0 {
		return nil
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], cmd.CommandPath())
	if cmd.SuggestionsMinimumDistance <= 0 {
		cmd.SuggestionsMinimumDistance = 2
	}
	if s := cmd.SuggestionsFor(args[0]); len(s) > 0 {
		msg += fmt.Sprintf(" (did you mean %q?)", s[0])
	}
	return usageError(msg)
}

// exactArgs is cobra.ExactArgs with a usage error (exit 2).
func exactArgs(names ...string) cobra.PositionalArgs {
	return func(cmd *cobra.Command, args []string) error {
		if len(args) != len(names) {
			plural := "s"
			if len(names) == 1 {
				plural = ""
			}
			return usageErrorf("%q takes %d argument%s (%s), got %d", cmd.CommandPath(), len(names), plural, strings.Join(names, " "), len(args))
		}
		return nil
	}
}

func noArgs(cmd *cobra.Command, args []string) error {
	if len(args) > 0 {
		return usageErrorf("%q takes no arguments, got %q", cmd.CommandPath(), args[0])
	}
	return nil
}

func needs(cmd *cobra.Command, daemons ...string) *cobra.Command {
	if cmd.Annotations == nil {
		cmd.Annotations = map[string]string{}
	}
	cmd.Annotations[needsAnnotation] = strings.Join(daemons, ",")
	return cmd
}

// preRun validates the global flags and dials the daemons the command needs.
func (a *app) preRun(cmd *cobra.Command, _ []string) error {
	f, err := parseFormat(a.output)
	if err != nil {
		return err
	}
	a.format = f
	for _, v := range []struct {
		dst *string
		env string
	}{{&a.tls.Cert, "FOUROVER6_TLS_CERT"}, {&a.tls.Key, "FOUROVER6_TLS_KEY"}, {&a.tls.CA, "FOUROVER6_TLS_CA"}} {
		if *v.dst == "" {
			*v.dst = a.getenv(v.env)
		}
	}
	if err := a.tls.Validate(); err != nil {
		return usageError(err.Error())
	}
	a.controller.tls, a.dataplane.tls = &a.tls, &a.tls
	if a.timeout < 0 {
		return usageErrorf("invalid --timeout %v: must not be negative", a.timeout)
	}
	for _, n := range strings.Split(cmd.Annotations[needsAnnotation], ",") {
		switch n {
		case needController:
			err = a.connect(cmd.Flags(), a.controller)
		case needDataplane:
			err = a.connect(cmd.Flags(), a.dataplane)
		}
		if err != nil {
			return err
		}
	}
	return nil
}

// resolve picks a daemon's address: flag, then environment, then default.
func (a *app) resolve(flags *pflag.FlagSet, d *daemon) {
	switch {
	case flags.Changed(d.name):
		d.addr, d.source = d.flagValue, "--"+d.name
	case a.getenv(d.envVar) != "":
		d.addr, d.source = a.getenv(d.envVar), "$"+d.envVar
	default:
		d.addr, d.source = d.def, "default"
	}
}

// connect resolves and parses a daemon's address(es). Nothing is dialled:
// the first request does (see conn.go), and fails fast (no WaitForReady)
// when nothing listens there.
func (a *app) connect(flags *pflag.FlagSet, d *daemon) error {
	if d.eps != nil {
		return nil
	}
	a.resolve(flags, d)
	eps, err := endpoint.ParseList(d.addr)
	if err != nil {
		return usageErrorf("invalid %s address (from %s): %v", d.name, d.source, err)
	}
	if len(eps) > 1 && !d.multi {
		return usageErrorf("invalid %s address (from %s): %d addresses given, a command talks to one %s", d.name, d.source, len(eps), d.name)
	}
	for _, ep := range eps {
		what := fmt.Sprintf("%s address %s (from %s)", d.name, ep, d.source)
		if err := a.tls.RequireForDial(what, ep, "--tls-cert, --tls-key and --tls-ca (or $FOUROVER6_TLS_CERT, $FOUROVER6_TLS_KEY and $FOUROVER6_TLS_CA)"); err != nil {
			return usageError(err.Error())
		}
	}
	d.eps = eps
	d.probeTimeout = maxProbeTimeout
	if a.timeout > 0 && a.timeout < d.probeTimeout {
		d.probeTimeout = a.timeout
	}
	return nil
}

// dialOptions builds the gRPC dial options of the daemons: mutual TLS when
// --tls-* (or $FOUROVER6_TLS_*) name the files, plaintext otherwise.
func dialOptions(files *tlsconf.Files) ([]grpc.DialOption, error) {
	var tf tlsconf.Files
	if files != nil {
		tf = *files
	}
	creds, err := tf.DialOption()
	if err != nil {
		return nil, usageError(err.Error())
	}
	return []grpc.DialOption{creds, grpc.WithUserAgent("4over6ctl/" + version.String())}, nil
}

func (a *app) closeConns() {
	a.controller.close()
	a.dataplane.close()
}

// ctrl is the controller's API (on whichever of its addresses is chosen).
func (a *app) ctrl() cpv1.ControllerServiceClient {
	return cpv1.NewControllerServiceClient(a.controller)
}

// dp is the API of the data plane at --dataplane.
func (a *app) dp() dpv1.DataplaneServiceClient {
	return dpv1.NewDataplaneServiceClient(a.dataplane)
}

// callContext bounds one command's requests by --timeout.
func (a *app) callContext(cmd *cobra.Command) (context.Context, context.CancelFunc) {
	ctx := cmd.Context()
	if ctx == nil {
		ctx = context.Background()
	}
	if a.timeout > 0 {
		return context.WithTimeout(ctx, a.timeout)
	}
	return context.WithCancel(ctx)
}

// cliError is an error with its exit code.
type cliError struct {
	code  int
	msg   string
	usage bool // print a hint to --help in table mode
	// silent: the command printed what went wrong itself (check): only
	// the exit code is left to give.
	silent bool
}

func (e *cliError) Error() string { return e.msg }

func usageError(msg string) error { return &cliError{code: exitUsage, msg: msg, usage: true} }

func usageErrorf(format string, args ...any) error {
	return usageError(fmt.Sprintf(format, args...))
}

func asCLIError(err error) *cliError {
	var ce *cliError
	if errors.As(err, &ce) {
		return ce
	}
	// Flag and argument errors are usage errors already: SetFlagErrorFunc
	// and the commands' Args validators make them.
	if errors.Is(err, context.Canceled) {
		return &cliError{code: exitError, msg: "interrupted"}
	}
	return &cliError{code: exitError, msg: err.Error()}
}

// rpcError turns the error of a call to d into a cliError with the right
// exit code and a one-line message naming the daemon and its address.
func (a *app) rpcError(d *daemon, err error) error {
	if err == nil {
		return nil
	}
	var ce *cliError
	if errors.As(err, &ce) {
		return ce
	}
	var none *ctlclient.Error
	if errors.As(err, &none) {
		return a.noneAnswered(d, none)
	}
	addr := d.addressText()
	st, ok := status.FromError(err)
	if !ok {
		if errors.Is(err, context.Canceled) {
			return &cliError{code: exitError, msg: "interrupted"}
		}
		return &cliError{code: exitError, msg: fmt.Sprintf("%s at %s: %v", d.name, addr, err)}
	}
	if leaderID, ok := ctlclient.IsNotLeader(err); ok {
		leads := "no leader is elected right now"
		if leaderID != "" {
			leads = "the leader is " + leaderID
		}
		if len(d.eps) > 1 {
			// Several addresses: only a stream that was already running
			// ends this way (anything else moves to the new leader).
			return &cliError{code: exitError, msg: fmt.Sprintf("%s at %s stopped leading (%s); run the command again", d.name, addr, leads)}
		}
		return &cliError{code: exitError, msg: fmt.Sprintf("%s at %s is not the leader (%s); give every controller's address, e.g. --controller a,b,c",
			d.name, addr, leads)}
	}
	// The connection was up: these came from the daemon itself (ctlclient
	// turns a connection that never came up into a *ctlclient.Error).
	switch st.Code() {
	case codes.Unavailable:
		msg := cleanTransport(st.Message())
		if c := d.current(); c != nil {
			if ep, ok := c.Current(); ok {
				msg = withHint(msg, a.connectionHint(ep, err, msg))
			}
		}
		return &cliError{code: exitError, msg: fmt.Sprintf("%s at %s is unavailable: %s", d.name, addr, msg)}
	case codes.DeadlineExceeded:
		return &cliError{code: exitError, msg: fmt.Sprintf("%s at %s did not answer within %v", d.name, addr, a.timeout)}
	case codes.NotFound:
		return &cliError{code: exitNotFound, msg: st.Message()}
	case codes.PermissionDenied:
		return &cliError{code: exitDenied, msg: fmt.Sprintf("%s at %s: permission denied: %s", d.name, addr, st.Message())}
	case codes.InvalidArgument:
		return &cliError{code: exitUsage, msg: fmt.Sprintf("%s at %s: %s", d.name, addr, st.Message())}
	case codes.Unimplemented:
		return &cliError{code: exitError, msg: fmt.Sprintf("%s at %s does not implement this request (is it a fourover6 %s of a matching version?): %s", d.name, addr, d.name, st.Message())}
	case codes.Canceled:
		return &cliError{code: exitError, msg: "interrupted"}
	}
	return &cliError{code: exitError, msg: fmt.Sprintf("%s at %s: %s: %s", d.name, addr, codeText(st.Code()), st.Message())}
}

// noneAnswered explains a request no address could take: unreachable
// (exit 3) when nothing answered at any, else an error (exit 1).
func (a *app) noneAnswered(d *daemon, e *ctlclient.Error) error {
	if len(e.Endpoints) == 1 && !e.Answered() {
		return a.unreachable(d, e.Endpoints[0].Endpoint.String(), a.reason(e.Endpoints[0]))
	}
	parts := make([]string, len(e.Endpoints))
	standbys := true
	for i, ee := range e.Endpoints {
		parts[i] = ee.Endpoint.String() + ": " + a.reason(ee)
		var nl *ctlclient.NotLeaderError
		if ee.Answered && !errors.As(ee.Err, &nl) {
			standbys = false
		}
	}
	if !e.Answered() {
		return &cliError{code: exitUnreachable, msg: fmt.Sprintf("cannot reach %s at any of %d addresses: %s",
			d.name, len(e.Endpoints), strings.Join(parts, "; "))}
	}
	why := ""
	if standbys {
		why = " (none is the leader)"
	}
	return &cliError{code: exitError, msg: fmt.Sprintf("no usable %s%s: %s", d.name, why, strings.Join(parts, "; "))}
}

// reason is why one address was given up on; a call's own deadline is
// --timeout.
func (a *app) reason(ee *ctlclient.EndpointError) string {
	r := ee.Reason()
	if errors.Is(ee.Err, context.DeadlineExceeded) && ee.Within == 0 && a.timeout > 0 {
		e := *ee
		e.Within = a.timeout
		r = e.Reason()
	}
	r = cleanTransport(r)
	return withHint(r, a.connectionHint(ee.Endpoint, ee.Err, r))
}

func (a *app) unreachable(d *daemon, addr, reason string) error {
	return &cliError{code: exitUnreachable, msg: fmt.Sprintf("cannot reach %s at %s: %s", d.name, addr, reason)}
}
