package main

import (
	"encoding/json"
	"io"
	"net"
	"os"
	"time"
)

// The echo modes measure the floor under any user-space relay: a TCP
// round trip between two Go processes over the same veth, no tunnel.

// serveEcho echoes every connection on addr until killed.
func serveEcho(addr string) error {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return err
	}
	for {
		c, err := ln.Accept()
		if err != nil {
			return err
		}
		go func() {
			defer c.Close()
			io.Copy(c, c)
		}()
	}
}

// pingPong sends count 64-byte messages to addr, one every interval, and
// prints each round trip in microseconds as one JSON array.
func pingPong(addr string, count int, interval time.Duration) error {
	c, err := net.DialTimeout("tcp", addr, 10*time.Second)
	if err != nil {
		return err
	}
	defer c.Close()
	b := make([]byte, 64)
	rtts := make([]float64, 0, count)
	for range count {
		c.SetDeadline(time.Now().Add(5 * time.Second))
		t := time.Now()
		if _, err := c.Write(b); err != nil {
			return err
		}
		if _, err := io.ReadFull(c, b); err != nil {
			return err
		}
		rtts = append(rtts, float64(time.Since(t).Nanoseconds())/1000)
		time.Sleep(interval)
	}
	return json.NewEncoder(os.Stdout).Encode(rtts)
}
