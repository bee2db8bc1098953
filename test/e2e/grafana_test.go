package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// dashboardFile is the Grafana dashboard the README tells operators to
// import.
var dashboardFile = filepath.Join("..", "..", "docs", "grafana", "fourover6.json")

// labelMatcher is one `label op "value"` of a PromQL selector.
type labelMatcher struct {
	metric, label, op, value string
}

var (
	promString   = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	promRange    = regexp.MustCompile(`\[[^\]]*\]`)
	promBraces   = regexp.MustCompile(`\{[^}]*\}`)
	promLabels   = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	promNumber   = regexp.MustCompile(`\b\d+(?:\.\d+)?(?:[eE][+-]?\d+)?\b`)
	promIdent    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*`)
	promSelector = regexp.MustCompile(`([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}`)
	promMatcher  = regexp.MustCompile(`([a-zA-Z_][a-zA-Z0-9_]*)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"`)
	labelValues  = regexp.MustCompile(`^label_values\(\s*([a-zA-Z_:][a-zA-Z0-9_:]*)\s*,\s*([a-zA-Z_][a-zA-Z0-9_]*)\s*\)$`)
	promKeywords = []string{"by", "without", "on", "ignoring", "group_left", "group_right", "and", "or", "unless", "bool", "offset", "inf", "nan"}
)

// promqlMetrics returns the metric names a PromQL expression selects (not
// its functions, keywords, label names or Grafana variables), sorted and
// unique, and the label matchers of its selectors.
func promqlMetrics(expr string) ([]string, []labelMatcher) {
	var ms []labelMatcher
	for _, s := range promSelector.FindAllStringSubmatch(expr, -1) {
		for _, m := range promMatcher.FindAllStringSubmatch(s[2], -1) {
			ms = append(ms, labelMatcher{metric: s[1], label: m[1], op: m[2], value: m[3]})
		}
	}
	rest := promBraces.ReplaceAllString(expr, " ")
	rest = promString.ReplaceAllString(rest, " ")
	rest = promRange.ReplaceAllString(rest, " ")
	rest = promLabels.ReplaceAllString(rest, " ")
	rest = promNumber.ReplaceAllString(rest, " ")
	var names []string
	for _, loc := range promIdent.FindAllStringIndex(rest, -1) {
		id := rest[loc[0]:loc[1]]
		if loc[0] > 0 && rest[loc[0]-1] == '$' { // a Grafana variable
			continue
		}
		if after := strings.TrimLeft(rest[loc[1]:], " \t\n"); strings.HasPrefix(after, "(") {
			continue // a function or an aggregation
		}
		if slices.Contains(promKeywords, strings.ToLower(id)) || slices.Contains(names, id) {
			continue
		}
		names = append(names, id)
	}
	sort.Strings(names)
	return names, ms
}

func TestPromQLMetrics(t *testing.T) {
	for expr, want := range map[string][]string{
		`sum by (id, direction) (rate(fourover6_dataplane_bytes_total{direction="from_client"}[$__rate_interval]) * on (instance, job) group_left (id) fourover6_dataplane_info{id=~"$dataplane"}) * 8`: {
			"fourover6_dataplane_bytes_total", "fourover6_dataplane_info"},
		`histogram_quantile(0.99, sum by (le, job) (rate(grpc_server_handling_seconds_bucket{grpc_type="unary"}[5m])))`: {"grpc_server_handling_seconds_bucket"},
		`count(up_gauge == 0) or vector(0)`:          {"up_gauge"},
		`time() - last_seen_seconds > 1e9`:           {"last_seen_seconds"},
		`1 - sum(a{state="free"}) / sum(b) unless c`: {"a", "b", "c"},
	} {
		got, _ := promqlMetrics(expr)
		if !slices.Equal(got, want) {
			t.Errorf("promqlMetrics(%q) = %v, want %v", expr, got, want)
		}
	}
	_, ms := promqlMetrics(`rate(x_total{code!="OK", type="unary"}[1m])`)
	if len(ms) != 2 || ms[0] != (labelMatcher{"x_total", "code", "!=", "OK"}) || ms[1] != (labelMatcher{"x_total", "type", "=", "unary"}) {
		t.Errorf("matchers = %v", ms)
	}
}

// dashboard is the part of a Grafana dashboard the test reads.
type dashboard struct {
	Title      string `json:"title"`
	UID        string `json:"uid"`
	Templating struct {
		List []struct {
			Type       string `json:"type"`
			Name       string `json:"name"`
			Definition string `json:"definition"`
		} `json:"list"`
	} `json:"templating"`
	Panels []struct {
		ID         int    `json:"id"`
		Type       string `json:"type"`
		Title      string `json:"title"`
		Datasource *struct {
			UID string `json:"uid"`
		} `json:"datasource"`
		GridPos struct{ H, W, X, Y int } `json:"gridPos"`
		Targets []struct {
			Expr  string `json:"expr"`
			RefID string `json:"refId"`
		} `json:"targets"`
	} `json:"panels"`
}

func readDashboard(t *testing.T) dashboard {
	t.Helper()
	b, err := os.ReadFile(dashboardFile)
	if err != nil {
		t.Fatal(err)
	}
	var d dashboard
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("%s: %v", dashboardFile, err)
	}
	return d
}

// TestDashboardShape: the dashboard imports as Grafana expects it: a
// data source variable every panel uses, unique panel ids, a query in
// every panel, panels within the 24-column grid.
func TestDashboardShape(t *testing.T) {
	d := readDashboard(t)
	if d.Title == "" || d.UID == "" {
		t.Errorf("title %q uid %q", d.Title, d.UID)
	}
	hasDS := false
	for _, v := range d.Templating.List {
		hasDS = hasDS || (v.Type == "datasource" && v.Name == "datasource")
	}
	if !hasDS {
		t.Error("no datasource variable: the import step could not pick the Prometheus data source")
	}
	ids := map[int]bool{}
	queries := 0
	for _, p := range d.Panels {
		if ids[p.ID] || p.ID == 0 {
			t.Errorf("panel %q: id %d missing or repeated", p.Title, p.ID)
		}
		ids[p.ID] = true
		if p.GridPos.W <= 0 || p.GridPos.X+p.GridPos.W > 24 || p.GridPos.H <= 0 {
			t.Errorf("panel %q: grid position %+v", p.Title, p.GridPos)
		}
		if p.Type == "row" {
			continue
		}
		if p.Datasource == nil || p.Datasource.UID != "${datasource}" {
			t.Errorf("panel %q does not use the datasource variable", p.Title)
		}
		if len(p.Targets) == 0 {
			t.Errorf("panel %q has no query", p.Title)
		}
		for _, q := range p.Targets {
			if strings.TrimSpace(q.Expr) == "" || q.RefID == "" {
				t.Errorf("panel %q: empty query or refId", p.Title)
			}
			queries++
		}
	}
	if queries < 20 {
		t.Errorf("only %d queries", queries)
	}
}

// scrapeFamilies parses a daemon's /metrics.
func scrapeFamilies(t *testing.T, sock string) map[string]*dto.MetricFamily {
	t.Helper()
	p := expfmt.NewTextParser(model.UTF8Validation)
	mfs, err := p.TextToMetricFamilies(bytes.NewReader(metricsPage(t, sock)))
	if err != nil {
		t.Fatalf("parse %s: %v", sock, err)
	}
	return mfs
}

// TestDashboardQueriesExist: every series the dashboard queries exists in
// what a real controller and data plane export, and every label value its
// selectors match exactly is one they export.
func TestDashboardQueriesExist(t *testing.T) {
	t.Parallel()
	d := readDashboard(t)
	_, dpSock, ctlSock := metricsEnv(t)

	mfs := scrapeFamilies(t, dpSock)
	for n, mf := range scrapeFamilies(t, ctlSock) {
		if have, ok := mfs[n]; ok {
			have.Metric = append(have.Metric, mf.Metric...)
		} else {
			mfs[n] = mf
		}
	}
	// family resolves a name a query uses: a family, or a histogram's
	// _bucket, _sum or _count series.
	family := func(name string) *dto.MetricFamily {
		if mf, ok := mfs[name]; ok {
			return mf
		}
		for _, suffix := range []string{"_bucket", "_sum", "_count"} {
			if base, ok := strings.CutSuffix(name, suffix); ok {
				if mf, ok := mfs[base]; ok && (mf.GetType() == dto.MetricType_HISTOGRAM || mf.GetType() == dto.MetricType_SUMMARY) {
					return mf
				}
			}
		}
		return nil
	}
	hasLabel := func(mf *dto.MetricFamily, label, value string, exact bool) bool {
		for _, m := range mf.Metric {
			for _, l := range m.Label {
				if l.GetName() == label && (!exact || l.GetValue() == value) {
					return true
				}
			}
		}
		return false
	}

	queried := map[string]bool{}
	check := func(where, expr string) {
		names, matchers := promqlMetrics(expr)
		if len(names) == 0 {
			t.Errorf("%s: no metric found in %q", where, expr)
		}
		for _, n := range names {
			queried[n] = true
			if family(n) == nil {
				t.Errorf("%s: %s is not exported by either daemon (query %q)", where, n, expr)
			}
		}
		for _, m := range matchers {
			mf := family(m.metric)
			if mf == nil {
				continue // reported above
			}
			exact := m.op == "=" && !strings.Contains(m.value, "$")
			if !hasLabel(mf, m.label, m.value, exact) {
				t.Errorf("%s: no %s series with %s%s%q (query %q)", where, m.metric, m.label, m.op, m.value, expr)
			}
		}
	}
	for _, p := range d.Panels {
		for _, q := range p.Targets {
			check("panel "+p.Title, q.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if v.Type != "query" {
			continue
		}
		m := labelValues.FindStringSubmatch(v.Definition)
		if m == nil {
			t.Errorf("variable %s: query %q is not label_values(METRIC, LABEL)", v.Name, v.Definition)
			continue
		}
		queried[m[1]] = true
		if mf := family(m[1]); mf == nil || !hasLabel(mf, m[2], "", false) {
			t.Errorf("variable %s: no %s series with a %s label", v.Name, m[1], m[2])
		}
	}
	// What the dashboard must show: data planes up, clients, the pool,
	// throughput, drops, gRPC rates and errors.
	for _, must := range []string{"fourover6_controller_dataplane_up", "fourover6_dataplane_sessions_leased", "fourover6_controller_pool_addresses",
		"fourover6_dataplane_bytes_total", "fourover6_dataplane_drops_total", "grpc_server_handled_total", "grpc_server_handling_seconds_bucket"} {
		if !queried[must] {
			t.Errorf("the dashboard does not query %s", must)
		}
	}
	if len(queried) < 20 {
		t.Errorf("the dashboard queries %d series, want at least 20", len(queried))
	}
}
