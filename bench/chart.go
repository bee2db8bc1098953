package main

import (
	"fmt"
	"image/color"
	"math"
	"os"
	"strconv"
	"strings"

	"gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgimg"
)

// pathColors keeps each path's colour the same from run to run, so charts
// of two runs compare at a glance: baselines grey, references muted, ours
// in colour.
var pathColors = map[string]color.RGBA{
	"raw":           {R: 120, G: 120, B: 120, A: 255},
	"kernel":        {R: 190, G: 190, B: 190, A: 255},
	"ours-default":  {R: 200, G: 40, B: 60, A: 255},
	baselinePath:    {R: 230, G: 150, B: 160, A: 255},
	"ours-water":    {R: 230, G: 140, B: 30, A: 255},
	"ours-offload":  {R: 40, G: 110, B: 200, A: 255},
	"wireguard-go":  {R: 120, G: 90, B: 170, A: 255},
	"openvpn-tcp":   {R: 90, G: 160, B: 110, A: 255},
	"fallback-path": {R: 60, G: 60, B: 60, A: 255},
}

// rttGroups are the groups of the RTT panel: under a 1-stream load each
// way, the median and the 99th percentile.
var rttGroups = []struct {
	direction, stat string
}{{"upload", "p50"}, {"upload", "p99"}, {"download", "p50"}, {"download", "p99"}}

// writeChart draws two panels, one bar per path in each group, raw and
// kernel next to ours and the references: throughput per cell (direction
// x streams), and RTT under a 1-stream load per direction (p50, p99). A
// header says what was measured and how busy the machine was.
func writeChart(rep *Report, file string) error {
	paths := throughputPaths(rep)
	if len(paths) == 0 {
		return fmt.Errorf("no throughput results to chart")
	}
	tp, err := throughputPlot(rep, paths)
	if err != nil {
		return err
	}
	rp, err := rttPlot(rep, paths)
	if err != nil {
		return err
	}
	lines := chartHeader(rep)
	lineH := vg.Points(11)
	headerH := lineH*vg.Length(len(lines)) + vg.Points(8)
	w, plotH := 26*vg.Centimeter, 11*vg.Centimeter
	panels := []*plot.Plot{tp}
	if rp != nil {
		panels = append(panels, rp)
	}
	h := headerH + plotH*vg.Length(len(panels))
	img := vgimg.New(w, h)
	dc := draw.New(img)
	dc.SetColor(color.White)
	dc.Fill(dc.Rectangle.Path())

	sty := draw.TextStyle{Color: color.Black, Font: font.From(plot.DefaultFont, 9), Handler: plot.DefaultTextHandler}
	for i, line := range lines {
		s := sty
		if i == 0 {
			s.Font = font.From(plot.DefaultFont, 11)
		}
		dc.FillText(s, vg.Point{X: dc.Min.X + vg.Points(10), Y: dc.Max.Y - lineH*vg.Length(i+1)}, line)
	}
	body := draw.Crop(dc, 0, 0, 0, -headerH)
	rows := make([][]*plot.Plot, len(panels))
	for i, p := range panels {
		rows[i] = []*plot.Plot{p}
	}
	tiles := draw.Tiles{Rows: len(panels), Cols: 1, PadTop: vg.Points(4), PadBottom: vg.Points(4), PadLeft: vg.Points(4), PadRight: vg.Points(4), PadY: vg.Points(10)}
	canvases := plot.Align(rows, tiles, body)
	for i, p := range panels {
		p.Draw(canvases[i][0])
	}
	f, err := os.Create(file)
	if err != nil {
		return err
	}
	if _, err := (vgimg.PngCanvas{Canvas: img}).WriteTo(f); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

// chartHeader: title, commit, and the machine's load.
func chartHeader(rep *Report) []string {
	m := rep.Machine
	commit := m.GitDescribe
	if commit == "" {
		commit = shortCommit(m)
	} else if m.GitDirty && !strings.HasSuffix(commit, "-dirty") {
		commit += "-dirty"
	}
	dirty := "clean tree"
	if m.GitDirty {
		dirty = "uncommitted changes"
	}
	lines := []string{
		fmt.Sprintf("fourover6 benchmark %s%s", rep.StartedAt.Format("2006-01-02 15:04 MST"), quickSuffix(rep.Quick)),
		fmt.Sprintf("commit %s (%s); %s x%d, kernel %s", commit, dirty, m.CPUModel, m.Cores, m.Kernel),
	}
	la, le := m.LoadAvgStart, m.LoadAvgEnd
	load := fmt.Sprintf("load average %.2f before, %.2f after (1 min)", la[0], le[0])
	if c := m.CPU; c != nil {
		load += fmt.Sprintf("; other processes took %.0f CPU-s (%.0f%% of the machine) during the %.0f s run", c.OthersS, c.OthersPct, c.WallS)
	}
	return append(lines, load)
}

func quickSuffix(q bool) string {
	if q {
		return " (quick smoke run: not comparable)"
	}
	return ""
}

func throughputPlot(rep *Report, paths []string) (*plot.Plot, error) {
	p := plot.New()
	p.Title.Text = "Throughput, iperf3 TCP"
	p.Y.Label.Text = "Gbit/s"
	names := make([]string, len(cells))
	for i, c := range cells {
		names[i] = fmt.Sprintf("%s, %d stream", c.direction, c.streams)
		if c.streams > 1 {
			names[i] += "s"
		}
	}
	vals := make([]plotter.Values, len(paths))
	for i, path := range paths {
		vals[i] = make(plotter.Values, len(cells))
		for j, c := range cells {
			for _, t := range rep.Throughput {
				if t.Path == path && t.Direction == c.direction && t.Streams == c.streams && t.Error == "" {
					vals[i][j] = t.Gbps
				}
			}
		}
	}
	return groupedBars(p, rep, paths, names, vals, "%.1f")
}

// rttPlot is nil when the run measured no loaded RTT.
func rttPlot(rep *Report, paths []string) (*plot.Plot, error) {
	vals := make([]plotter.Values, len(paths))
	any := false
	for i, path := range paths {
		vals[i] = make(plotter.Values, len(rttGroups))
		for j, g := range rttGroups {
			for _, r := range rep.RTT {
				if r.Path == path && r.Load == "loaded" && r.direction() == g.direction && r.Error == "" && r.Received > 0 {
					v := r.P50Us
					if g.stat == "p99" {
						v = r.P99Us
					}
					vals[i][j], any = v/1000, true
				}
			}
		}
	}
	if !any {
		return nil, nil
	}
	p := plot.New()
	p.Title.Text = "RTT (ping) during a 1-stream iperf3 through the same path"
	p.Y.Label.Text = "ms"
	names := make([]string, len(rttGroups))
	for i, g := range rttGroups {
		names[i] = g.stat + ", " + g.direction + " load"
	}
	return groupedBars(p, rep, paths, names, vals, "%.2f")
}

// groupedBars adds one bar per path in each group, labelled with values.
func groupedBars(p *plot.Plot, rep *Report, paths, groups []string, vals []plotter.Values, format string) (*plot.Plot, error) {
	p.Y.Min = 0
	grid := plotter.NewGrid() // first, so the bars are drawn over it
	grid.Vertical.Color = nil // lines through the groups only get in the way
	p.Add(grid)
	width := vg.Points(math.Min(18, 150/float64(len(paths))))
	top := 0.0
	for i, path := range paths {
		for _, v := range vals[i] {
			top = max(top, v)
		}
		bars, err := plotter.NewBarChart(vals[i], width)
		if err != nil {
			return nil, err
		}
		bars.LineStyle.Width = 0
		bars.Color = pathColors["fallback-path"]
		if col, ok := pathColors[path]; ok {
			bars.Color = col
		}
		bars.Offset = width * vg.Length(float64(i)-float64(len(paths)-1)/2)
		p.Add(bars)
		p.Legend.Add(pathLabel(rep, path), bars)
		if err := addValueLabels(p, vals[i], bars.Offset, format); err != nil {
			return nil, err
		}
	}
	p.Legend.Top = true
	p.Legend.TextStyle.Font.Size = vg.Points(8)
	p.NominalX(groups...)
	// Room above the bars for the legend, which would otherwise hide the
	// tallest bars.
	p.X.Min, p.X.Max = -0.5, float64(len(groups))-0.5
	if top <= 0 {
		top = 1
	}
	step := niceStep(top * 1.5 / 6)
	p.Y.Max = math.Ceil(top*1.5/step) * step
	p.Y.Tick.Marker = plot.TickerFunc(func(lo, hi float64) []plot.Tick {
		var ts []plot.Tick
		for v := 0.0; v <= hi+step/2; v += step {
			ts = append(ts, plot.Tick{Value: v, Label: strconv.FormatFloat(v, 'f', -1, 64)})
		}
		return ts
	})
	return p, nil
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
func addValueLabels(p *plot.Plot, vals plotter.Values, offset vg.Length, format string) error {
	xys := make(plotter.XYs, len(vals))
	texts := make([]string, len(vals))
	for i, v := range vals {
		xys[i] = plotter.XY{X: float64(i), Y: v}
		texts[i] = fmt.Sprintf(format, v)
	}
	labels, err := plotter.NewLabels(plotter.XYLabels{XYs: xys, Labels: texts})
	if err != nil {
		return err
	}
	for i := range labels.TextStyle {
		labels.TextStyle[i].Font.Size = vg.Points(6)
		labels.TextStyle[i].Rotation = math.Pi / 2 // upright bars, upright numbers: narrow bars stay legible
		labels.TextStyle[i].XAlign = draw.XLeft
		labels.TextStyle[i].YAlign = draw.YCenter
	}
	labels.Offset = vg.Point{X: offset, Y: vg.Points(2)}
	p.Add(labels)
	return nil
}

// niceStep rounds v up to 1, 2 or 5 times a power of ten, so an axis is
// labelled at round numbers.
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
