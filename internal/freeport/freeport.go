// Package freeport picks loopback TCP ports for servers that must know
// their address before they start: cluster routes that name each other,
// a controller restarted on the same address, a port known to be closed.
//
// The ports are picked below the kernel's ephemeral range
// (net.ipv4.ip_local_port_range). A port from Listen("127.0.0.1:0") comes
// from that range, and once closed again the kernel may hand it to any
// process's next outgoing connection before the server binds it: on a
// machine running e2e tests that dial hundreds of connections a second,
// a JetStream test lost a route port that way (CI, 2026-11-30). Below the
// range only an explicit bind can take a port, and the pick is random over
// thousands of them.
package freeport

import (
	"fmt"
	"math/rand/v2"
	"net"
	"os"
	"strconv"
	"strings"
	"testing"
)

// span is how many ports below the ephemeral range are picked from.
const span = 12000

// Pick returns n distinct free loopback ports. Each is bound while the
// others are picked and closed before Pick returns.
func Pick(n int) ([]int, error) {
	lo, hi := window()
	var ls []net.Listener
	defer func() {
		for _, l := range ls {
			l.Close()
		}
	}()
	ports := make([]int, 0, n)
	for tries := 0; len(ports) < n; tries++ {
		if tries > 100*n {
			return nil, fmt.Errorf("no free loopback port in %d-%d after %d tries", lo, hi, tries)
		}
		addr := "127.0.0.1:0"
		if hi > lo {
			addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(lo+rand.IntN(hi-lo+1)))
		}
		l, err := net.Listen("tcp", addr)
		if err != nil {
			continue // taken: try another
		}
		ls = append(ls, l)
		ports = append(ports, l.Addr().(*net.TCPAddr).Port)
	}
	return ports, nil
}

// Get is Pick for tests: it fails tb instead of returning an error.
func Get(tb testing.TB, n int) []int {
	tb.Helper()
	ports, err := Pick(n)
	if err != nil {
		tb.Fatal(err)
	}
	return ports
}

// Addr is one free port as 127.0.0.1:PORT.
func Addr(tb testing.TB) string {
	tb.Helper()
	return fmt.Sprintf("127.0.0.1:%d", Get(tb, 1)[0])
}

// window is the range to pick from: the span just below the ephemeral
// range, or nothing (lo == hi: let the kernel choose) when the range
// cannot be read or leaves no room below it.
func window() (lo, hi int) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return 0, 0
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return 0, 0
	}
	start, err := strconv.Atoi(f[0])
	if err != nil || start <= 1024+1000 {
		return 0, 0
	}
	hi = start - 1
	lo = max(1024, hi-span)
	return lo, hi
}
