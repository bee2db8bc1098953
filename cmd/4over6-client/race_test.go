//go:build race

package main

// The race detector makes sync.Pool drop buffers at random: allocation
// counts mean nothing under it.
const raceEnabled = true
