package main

import (
	"fmt"
	"strconv"
	"strings"
)

// table is one section of the printed and Markdown reports.
type table struct {
	title  string
	header []string
	rows   [][]string
	notes  []string
}

// text renders t with aligned columns for a terminal.
func (t table) text() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n== %s\n", t.title)
	width := make([]int, len(t.header))
	for _, r := range append([][]string{t.header}, t.rows...) {
		for i, c := range r {
			width[i] = max(width[i], len([]rune(c)))
		}
	}
	line := func(r []string) {
		for i, c := range r {
			pad := width[i] - len([]rune(c))
			if i > 0 && (isNumeric(c) || c == "-" || c == "ERR") {
				fmt.Fprintf(&b, "%s%s", strings.Repeat(" ", pad), c) // numbers right-aligned
			} else {
				fmt.Fprintf(&b, "%s%s", c, strings.Repeat(" ", pad))
			}
			if i < len(r)-1 {
				b.WriteString("  ")
			}
		}
		b.WriteString("\n")
	}
	line(t.header)
	for _, r := range t.rows {
		line(r)
	}
	for _, n := range t.notes {
		fmt.Fprintf(&b, "  %s\n", n)
	}
	return b.String()
}

// markdown renders t as a GitHub table.
func (t table) markdown() string {
	var b strings.Builder
	fmt.Fprintf(&b, "\n## %s\n\n", t.title)
	esc := func(s string) string { return strings.ReplaceAll(s, "|", "\\|") }
	row := func(r []string) {
		b.WriteString("|")
		for _, c := range r {
			fmt.Fprintf(&b, " %s |", esc(c))
		}
		b.WriteString("\n")
	}
	row(t.header)
	b.WriteString("|")
	for i := range t.header {
		if i > 0 {
			b.WriteString("---:|")
		} else {
			b.WriteString("---|")
		}
	}
	b.WriteString("\n")
	for _, r := range t.rows {
		row(r)
	}
	if len(t.notes) > 0 {
		b.WriteString("\n")
		for _, n := range t.notes {
			fmt.Fprintf(&b, "%s\n", n)
		}
	}
	return b.String()
}

// isNumeric: a number (with an optional % or x), or a count like 29/30.
func isNumeric(s string) bool {
	s = strings.TrimSuffix(strings.TrimSuffix(strings.TrimSpace(s), "%"), "x")
	if a, b, ok := strings.Cut(s, "/"); ok {
		return isNumeric(a) && isNumeric(b)
	}
	_, err := strconv.ParseFloat(s, 64)
	return err == nil
}

func f1(v float64) string { return fmt.Sprintf("%.1f", v) }
func f2(v float64) string { return fmt.Sprintf("%.2f", v) }
func f3(v float64) string { return fmt.Sprintf("%.3f", v) }

func ratio(r *float64) string {
	if r == nil {
		return "-"
	}
	return fmt.Sprintf("%.1f%%", *r*100)
}

func clip(s string, n int) string {
	if len(s) > n {
		return s[:n-3] + "..."
	}
	return s
}
