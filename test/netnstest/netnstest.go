// Package netnstest runs test code inside network namespaces the test
// creates, so tests never touch the host's own interfaces and routes.
package netnstest

import (
	"os"
	"runtime"
	"testing"

	"github.com/fourover6/fourover6/test/topo"
	"github.com/vishvananda/netns"
)

// RequireRoot skips the test when not running as root, unless
// FOUROVER6_REQUIRE_ROOT is set (make test sets it): then a missing
// privilege fails the test instead of silently skipping it.
func RequireRoot(t testing.TB) {
	t.Helper()
	if os.Geteuid() == 0 {
		if _, err := os.Stat("/dev/net/tun"); err != nil {
			t.Fatalf("/dev/net/tun: %v (load the tun module)", err)
		}
		return
	}
	if os.Getenv("FOUROVER6_REQUIRE_ROOT") != "" {
		t.Fatal("this test needs root (network namespaces, TUN) and FOUROVER6_REQUIRE_ROOT is set")
	}
	t.Skip("needs root: network namespaces and TUN devices")
}

// Do runs fn on a goroutine locked to an OS thread that has been moved into
// a new, empty network namespace. Sockets and devices fn creates live in
// that namespace and stay usable after fn returns. The namespace is handed
// to fn so it can come back later (see In). It is closed at test cleanup.
func Do(t testing.TB, fn func(ns netns.NsHandle)) netns.NsHandle {
	t.Helper()
	RequireRoot(t)
	var ns netns.NsHandle
	errc := make(chan error, 1)
	go func() {
		runtime.LockOSThread()
		orig, err := netns.Get()
		if err != nil {
			errc <- err
			return
		}
		defer orig.Close()
		ns, err = netns.New()
		if err != nil {
			errc <- err
			return
		}
		defer func() {
			if err := netns.Set(orig); err == nil {
				runtime.UnlockOSThread()
			} // else the thread dies with this goroutine: never reused in the wrong namespace
		}()
		fn(ns)
		errc <- nil
	}()
	if err := <-errc; err != nil {
		t.Fatalf("create network namespace: %v", err)
	}
	t.Cleanup(func() { ns.Close() })
	return ns
}

// In runs fn on a thread inside ns and waits for it.
func In(t testing.TB, ns netns.NsHandle, fn func()) {
	t.Helper()
	if err := topo.RunIn(ns, func() error { fn(); return nil }); err != nil {
		t.Fatalf("enter network namespace: %v", err)
	}
}
