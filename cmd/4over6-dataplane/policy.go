package main

import (
	"context"
	"fmt"
	"log/slog"
	"slices"

	"github.com/fourover6/fourover6/cmd/internal/config"
	"github.com/fourover6/fourover6/dataplane/policy"
)

// policyFlags are the flags a SIGHUP applies to the running data plane.
var policyFlags = []string{"allow", "deny", "allow-client-to-client"}

// newPolicy builds the destination policy from the flags' rules; the data
// plane gives it the pool once registered, configure the host's addresses.
func (d *daemon) newPolicy() error {
	rules, err := d.o.policyRules()
	if err != nil {
		return err
	}
	d.pol, err = policy.New(policy.Config{Rules: rules})
	if err != nil {
		return fmt.Errorf("destination policy: %w", err)
	}
	return nil
}

// watchHost reads the host's addresses into the policy, and keeps them
// current until the daemon closes. It runs in configure: on the goroutine
// (and so in the network namespace) the daemon started in, once the TUN
// has the gateway's address, before the first client is accepted.
func (d *daemon) watchHost() error {
	ctx, cancel := context.WithCancel(context.Background())
	hw, err := d.pol.WatchHost(ctx, d.log)
	if err != nil {
		cancel()
		return fmt.Errorf("destination policy: %w", err)
	}
	d.onClose(cancel)
	d.hosts.Store(hw)
	logPolicy(d.log, "destination policy", d.pol.Table())
	return nil
}

// policyReloader applies the policy flags again on SIGHUP.
func (d *daemon) policyReloader() config.Reloader {
	return config.Reloader{Names: policyFlags, Reload: func() error {
		return d.o.reloadPolicy(d.pol, d.hosts.Load(), d.log)
	}}
}

// reloadPolicy reads the command line and the config file again, as at
// start (the command line wins), and applies their destination rules; the
// host's addresses are read again too (when host is there). On error
// nothing changes.
func (o *options) reloadPolicy(pol *policy.Policy, host *policy.HostWatcher, log *slog.Logger) error {
	fresh := options{args: o.args}
	cmd := newCommand(&fresh)
	if err := cmd.ParseFlags(o.args); err != nil {
		return err
	}
	if err := config.ApplyFlag(cmd.Flags()); err != nil {
		return err
	}
	if err := fresh.validate(); err != nil {
		return err
	}
	rules, _ := fresh.policyRules() // validated
	if host != nil {
		if err := host.Refresh(); err != nil {
			return err
		}
	}
	prev := pol.Table().Config().Rules
	t, err := pol.SetRules(rules)
	if err != nil {
		return err
	}
	if !slices.Equal(prev.Allow, rules.Allow) || !slices.Equal(prev.Deny, rules.Deny) || prev.ClientToClient != rules.ClientToClient {
		logPolicy(log, "destination policy changed", t)
	}
	return nil
}

func logPolicy(log *slog.Logger, msg string, t *policy.Table) {
	c := t.Config()
	log.Info(msg, "allow", c.Rules.Allow, "deny", c.Rules.Deny, "allow_client_to_client", c.Rules.ClientToClient,
		"gateway", c.Gateway, "pool", c.Pool, "host_addresses", c.Host.Local, "entries", len(t.Entries()))
}
