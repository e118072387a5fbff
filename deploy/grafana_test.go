package deploy

import (
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"testing"

	"github.com/xlb-dev/xlb/control/web"
)

// dashboardExprs returns every PromQL expression of grafana/xlb.json: the
// panels' targets and the query variables.
func dashboardExprs(t *testing.T) []string {
	t.Helper()
	b, err := os.ReadFile("grafana/xlb.json")
	if err != nil {
		t.Fatal(err)
	}
	type panel struct {
		Title   string
		Targets []struct{ Expr string }
		Panels  []json.RawMessage
	}
	var d struct {
		Panels     []panel
		Templating struct {
			List []struct {
				Type  string
				Query any
			}
		}
	}
	if err := json.Unmarshal(b, &d); err != nil {
		t.Fatalf("grafana/xlb.json: %v", err)
	}
	var out []string
	for _, p := range d.Panels {
		for _, tg := range p.Targets {
			if strings.TrimSpace(tg.Expr) == "" {
				t.Errorf("panel %q has a target without an expression", p.Title)
				continue
			}
			out = append(out, tg.Expr)
		}
	}
	for _, v := range d.Templating.List {
		if q, ok := v.Query.(string); ok && v.Type == "query" {
			// label_values(metric, label) is Grafana's, not PromQL: check its metric.
			if m := regexp.MustCompile(`^label_values\((\w+),\s*\w+\)$`).FindStringSubmatch(q); m != nil {
				out = append(out, m[1])
			} else {
				t.Errorf("variable query %q: want label_values(metric, label)", q)
			}
		}
	}
	return out
}

// grafanaVars replaces Grafana's variables with values PromQL parses.
var grafanaVars = strings.NewReplacer("$__rate_interval", "1m", "$instance", ".*")

var (
	stringsRe  = regexp.MustCompile(`"(?:[^"\\]|\\.)*"`)
	bracesRe   = regexp.MustCompile(`\{[^}]*\}`)
	rangesRe   = regexp.MustCompile(`\[[^\]]*\]`)
	groupingRe = regexp.MustCompile(`\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)`)
	numbersRe  = regexp.MustCompile(`\b[0-9][0-9.e+]*(?:ms|[smhdwy])?`)
	identRe    = regexp.MustCompile(`[a-zA-Z_:][a-zA-Z0-9_:]*(\s*\()?`)
	keywords   = []string{"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring", "inf", "nan"}
)

// metricNames returns the metric names expr selects: identifiers that are
// not functions, keywords, label names or strings.
func metricNames(expr string) []string {
	e := stringsRe.ReplaceAllString(expr, `""`)
	e = bracesRe.ReplaceAllString(e, " ")
	e = rangesRe.ReplaceAllString(e, " ")
	e = groupingRe.ReplaceAllString(e, " ")
	e = numbersRe.ReplaceAllString(e, " ")
	var out []string
	for _, m := range identRe.FindAllStringSubmatch(e, -1) {
		if m[1] != "" || slices.Contains(keywords, strings.ToLower(m[0])) {
			continue // a function call, or a keyword
		}
		out = append(out, m[0])
	}
	return out
}

func TestMetricNamesExtraction(t *testing.T) {
	tests := []struct {
		expr string
		want []string
	}{
		{`xlb_member_up`, []string{"xlb_member_up"}},
		{`sum by (member, le) (rate(xlb_probe_duration_seconds_bucket{instance=~"a|b"}[1m]))`, []string{"xlb_probe_duration_seconds_bucket"}},
		{`a_total{x="rate(b)"} / ignoring(x) c_bytes offset 5m`, []string{"a_total", "c_bytes"}},
		{`histogram_quantile(0.99, x) == 1 and on (member) y`, []string{"x", "y"}},
	}
	for _, tt := range tests {
		if got := metricNames(tt.expr); !slices.Equal(got, tt.want) {
			t.Errorf("metricNames(%q) = %q, want %q", tt.expr, got, tt.want)
		}
	}
}

// TestDashboardMetrics checks that every expression names only metrics xlb
// exports (or Prometheus's up, and the Go and process collectors').
func TestDashboardMetrics(t *testing.T) {
	known := web.MetricNames()
	used := map[string]bool{}
	for _, expr := range dashboardExprs(t) {
		names := metricNames(grafanaVars.Replace(expr))
		if len(names) == 0 {
			t.Errorf("%q selects no metric", expr)
		}
		for _, n := range names {
			base := n
			for _, suf := range []string{"_bucket", "_sum", "_count"} {
				if b, ok := strings.CutSuffix(n, suf); ok && slices.Contains(known, b) {
					base = b
				}
			}
			used[base] = true
			switch {
			case slices.Contains(known, base):
			case n == "up", strings.HasPrefix(n, "process_"), strings.HasPrefix(n, "go_"):
			default:
				t.Errorf("%q uses %s, which xlb does not export", expr, n)
			}
		}
	}
	var unused []string
	for _, n := range known {
		if !used[n] {
			unused = append(unused, n)
		}
	}
	t.Logf("metrics not on the dashboard: %v", unused)
}

// TestDashboardPromQL has promtool parse every expression, as recording
// rules (promtool check rules parses PromQL and checks rule names).
func TestDashboardPromQL(t *testing.T) {
	promtool := requireTool(t, "promtool")
	type rule struct {
		Record string `json:"record"`
		Expr   string `json:"expr"`
	}
	var rules []rule
	for i, expr := range dashboardExprs(t) {
		rules = append(rules, rule{Record: fmt.Sprintf("xlb_dashboard:expr_%d", i), Expr: grafanaVars.Replace(expr)})
	}
	// YAML is a superset of JSON: promtool reads this as a rule file.
	b, err := json.MarshalIndent(map[string]any{"groups": []any{map[string]any{"name": "xlb_dashboard", "rules": rules}}}, "", "  ")
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "dashboard-rules.yml")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	out, err := exec.Command(promtool, "check", "rules", path).CombinedOutput()
	if err != nil {
		t.Fatalf("promtool check rules: %v\n%s", err, out)
	}
	if !strings.Contains(string(out), fmt.Sprintf("SUCCESS: %d rules found", len(rules))) {
		t.Fatalf("promtool check rules:\n%s", out)
	}
}
