package main

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
)

// writeResults saves <stamp>.json, <stamp>.md and <stamp>.png in dir, and
// copies them to latest.* so the newest full run is always at the same
// place. Quick (smoke) runs are saved with a -quick suffix and never
// become latest: their numbers are not comparable.
func writeResults(rep *Report, dir string) (files []string, err error) {
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	stamp := rep.StartedAt.UTC().Format("20060102T150405Z")
	if rep.Quick {
		stamp += "-quick"
	}
	base := filepath.Join(dir, stamp)
	chart := ""
	if len(rep.Throughput) > 0 {
		if err := writeChart(rep, base+".png"); err != nil {
			rep.addError("report", "chart", err)
		} else {
			chart = stamp + ".png"
			files = append(files, base+".png")
		}
	}
	js, err := json.MarshalIndent(rep, "", "  ")
	if err != nil {
		return files, err
	}
	if err := os.WriteFile(base+".json", append(js, '\n'), 0o644); err != nil {
		return files, err
	}
	files = append(files, base+".json")
	if err := os.WriteFile(base+".md", []byte(markdownReport(rep, chart)), 0o644); err != nil {
		return files, err
	}
	files = append(files, base+".md")
	if rep.Quick || rep.Interrupted {
		return files, nil
	}
	latest := filepath.Join(dir, "latest")
	for _, ext := range []string{".json", ".png"} {
		if b, err := os.ReadFile(base + ext); err == nil {
			if err := os.WriteFile(latest+ext, b, 0o644); err != nil {
				return files, err
			}
			files = append(files, latest+ext)
		}
	}
	// latest.md points at latest.png, not at the stamped chart.
	lchart := ""
	if chart != "" {
		lchart = "latest.png"
	} else {
		os.Remove(latest + ".png") // an older run's chart would mislead
	}
	if err := os.WriteFile(latest+".md", []byte(markdownReport(rep, lchart)), 0o644); err != nil {
		return files, fmt.Errorf("latest.md: %w", err)
	}
	files = append(files, latest+".md")
	return files, nil
}
