package main

import (
	"fmt"
	"image/color"
	"math"
	"strconv"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
)

// pathColors keeps each path's colour the same from run to run, so charts
// of two runs compare at a glance: baselines grey, ours in colour.
var pathColors = map[string]color.RGBA{
	"raw":          {R: 120, G: 120, B: 120, A: 255},
	"kernel":       {R: 190, G: 190, B: 190, A: 255},
	"ours-water":   {R: 230, G: 140, B: 30, A: 255},
	"ours-offload": {R: 40, G: 110, B: 200, A: 255},
}

// writeChart draws throughput per cell (direction x streams) with one bar
// per path, raw and kernel next to ours.
func writeChart(rep *Report, file string) error {
	var paths []string
	seen := map[string]bool{}
	for _, t := range rep.Throughput {
		if !seen[t.Path] {
			seen[t.Path] = true
			paths = append(paths, t.Path)
		}
	}
	if len(paths) == 0 {
		return fmt.Errorf("no throughput results to chart")
	}
	p := plot.New()
	p.Title.Text = fmt.Sprintf("fourover6 throughput (iperf3 TCP) - %s %s", rep.StartedAt.Format("2006-01-02 15:04"), shortCommit(rep.Machine))
	p.Y.Label.Text = "Gbit/s"
	p.Y.Min = 0
	names := make([]string, len(cells))
	for i, c := range cells {
		names[i] = fmt.Sprintf("%s, %d stream", c.direction, c.streams)
		if c.streams > 1 {
			names[i] += "s"
		}
	}
	grid := plotter.NewGrid() // first, so the bars are drawn over it
	grid.Vertical.Color = nil // lines through the groups only get in the way
	p.Add(grid)
	width := vg.Points(18)
	top := 0.0
	for i, path := range paths {
		vals := make(plotter.Values, len(cells))
		for j, c := range cells {
			for _, t := range rep.Throughput {
				if t.Path == path && t.Direction == c.direction && t.Streams == c.streams && t.Error == "" {
					vals[j] = t.Gbps
					top = max(top, t.Gbps)
				}
			}
		}
		bars, err := plotter.NewBarChart(vals, width)
		if err != nil {
			return err
		}
		bars.LineStyle.Width = 0
		if col, ok := pathColors[path]; ok {
			bars.Color = col
		}
		bars.Offset = width * vg.Length(float64(i)-float64(len(paths)-1)/2)
		label := path
		if path == "kernel" && rep.Config.KernelEncap != "" {
			label += " (" + rep.Config.KernelEncap + ")"
		}
		p.Add(bars)
		p.Legend.Add(label, bars)
		if err := addValueLabels(p, vals, bars.Offset); err != nil {
			return err
		}
	}
	p.Legend.Top = true
	p.NominalX(names...)
	// Room on the right of the last group and above the bars for the
	// legend, which would otherwise hide the tallest bars.
	p.X.Min, p.X.Max = -0.5, float64(len(cells))-0.5
	step := niceStep(top * 1.3 / 6)
	p.Y.Max = math.Ceil(top*1.3/step) * step
	p.Y.Tick.Marker = plot.TickerFunc(func(lo, hi float64) []plot.Tick {
		var ts []plot.Tick
		for v := 0.0; v <= hi+step/2; v += step {
			ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		}
		return ts
	})
	return p.Save(22*vg.Centimeter, 12*vg.Centimeter, file)
}

func shortCommit(m Machine) string {
	c := m.GitCommit
	if len(c) > 8 {
		c = c[:8]
	}
	if m.GitDirty {
		c += "+dirty"
	}
	return c
}

// addValueLabels writes each bar's value above it.
func addValueLabels(p *plot.Plot, vals plotter.Values, offset vg.Length) error {
	xys := make(plotter.XYs, len(vals))
	texts := make([]string, len(vals))
	for i, v := range vals {
		xys[i] = plotter.XY{X: float64(i), Y: v}
		texts[i] = fmt.Sprintf("%.1f", v)
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
	if err != nil {
		return err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].Font.Size = vg.Points(7)
		labels.TextStyle[i].XAlign = -0.5 // centred on the bar
	}
	labels.Offset = vg.Point{X: offset, Y: vg.Points(2)}
	p.Add(labels)
	return nil
}

// niceStep rounds v up to 1, 2 or 5 times a power of ten, so the Gbit/s
// axis is labelled at round numbers.
func niceStep(v float64) float64 {
	if v <= 0 {
		return 1
	}
	p := math.Pow(10, math.Floor(math.Log10(v)))
	for _, m := range []float64{1, 2, 5, 10} {
		if v <= m*p {
			return m * p
		}
	}
	return 10 * p
}
