package dataplane

import (
	"strings"
	"testing"
	"time"
)

// TestStuck: the watchdog's check is quiet while the heartbeat loop goes
// round, and before it runs (registering), and fails once it has not for
// six intervals.
func TestStuck(t *testing.T) {
	var d Dataplane
	d.heartbeat.Store(int64(5 * time.Second))
	if err := d.Stuck(); err != nil {
		t.Fatalf("before the loop: %v", err)
	}
	d.beatAt.Store(time.Now().Add(-20 * time.Second).UnixNano())
	if err := d.Stuck(); err != nil {
		t.Fatalf("20s ago, within 30s: %v", err)
	}
	d.beatAt.Store(time.Now().Add(-time.Minute).UnixNano())
	if err := d.Stuck(); err == nil || !strings.Contains(err.Error(), "heartbeat loop last went round 1m") {
		t.Fatalf("a minute ago: %v", err)
	}
	d.heartbeat.Store(int64(20 * time.Second)) // six intervals: 2m
	if err := d.Stuck(); err != nil {
		t.Fatalf("a minute ago with a 20s interval: %v", err)
	}
}
