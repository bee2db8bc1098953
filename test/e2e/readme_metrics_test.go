package e2e

import (
	"bufio"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"
)

// readmeMetrics returns the metric names of the README's metrics table,
// and those whose row says they appear only in some configurations ("only
// with ..." / "only when ...").
func readmeMetrics(t *testing.T) (all, conditional []string) {
	t.Helper()
	f, err := os.Open(filepath.Join("..", "..", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	name := regexp.MustCompile("`((?:fourover6|grpc_server)_[a-z0-9_]+)`")
	sc := bufio.NewScanner(f)
	inTable := false
	for sc.Scan() {
		line := sc.Text()
		switch {
		case line == "## Metrics":
			inTable = true
		case inTable && strings.HasPrefix(line, "## "):
			inTable = false
		}
		if !inTable || !(strings.HasPrefix(line, "| `fourover6_") || strings.HasPrefix(line, "| `grpc_server_")) {
			continue
		}
		first, rest, _ := strings.Cut(strings.TrimPrefix(line, "| "), " |")
		for _, m := range name.FindAllStringSubmatch(first, -1) {
			all = append(all, m[1])
			if strings.Contains(rest, "only with") || strings.Contains(rest, "only when") {
				conditional = append(conditional, m[1])
			}
		}
	}
	if len(all) == 0 {
		t.Fatal("no metrics table found in README.md")
	}
	return all, conditional
}

// families returns the metric families a daemon's /metrics declares (its
// "# TYPE" lines).
func families(t *testing.T, sock string) map[string]bool {
	t.Helper()
	out := map[string]bool{}
	for line := range strings.Lines(string(metricsPage(t, sock))) {
		if rest, ok := strings.CutPrefix(line, "# TYPE "); ok {
			name, _, _ := strings.Cut(rest, " ")
			out[name] = true
		}
	}
	return out
}

// metricsEnv starts a controller and a data plane with their metrics on
// unix sockets, and passes a client through (a lease and a release), so
// that the series that only exist once used (gRPC's) are there too.
func metricsEnv(t *testing.T) (e *env, dpSock, ctlSock string) {
	t.Helper()
	dpSock = filepath.Join(t.TempDir(), "dp-metrics.sock")
	ctlSock = filepath.Join(t.TempDir(), "ctl-metrics.sock")
	e = newEnv(t, envOptions{
		dataplaneArgs:  []string{"--metrics", "unix://" + dpSock},
		controllerArgs: []string{"--metrics", "unix://" + ctlSock},
	})
	e.waitFor("metrics endpoints", func() bool { return len(scrape(t, dpSock)) > 0 && len(scrape(t, ctlSock)) > 0 })
	c := e.dialLab()
	c.lease()
	c.conn.Close()
	e.waitFor("the release", func() bool { return e.pool().Leased == 0 })
	e.dpStatus()
	return e, dpSock, ctlSock
}

// ours reports whether a metric family is one the README documents: the
// daemons' own and the standard gRPC server series (not Go's and the
// process').
func ours(name string) bool {
	return strings.HasPrefix(name, "fourover6_") || strings.HasPrefix(name, "grpc_server_")
}

// TestREADMEMetricsTable: the README's metrics table lists exactly the
// fourover6_ and grpc_server_ series the two daemons export (a row may say
// a series appears only with some flag).
func TestREADMEMetricsTable(t *testing.T) {
	t.Parallel()
	_, dpSock, ctlSock := metricsEnv(t)

	exported := families(t, dpSock)
	for n := range families(t, ctlSock) {
		exported[n] = true
	}
	documented, conditional := readmeMetrics(t)
	for _, n := range documented {
		if !exported[n] && !slices.Contains(conditional, n) {
			t.Errorf("README.md lists %s, which neither daemon exports", n)
		}
	}
	for n := range exported {
		if ours(n) && !slices.Contains(documented, n) {
			t.Errorf("%s is exported but missing from README.md's metrics table", n)
		}
	}
}
