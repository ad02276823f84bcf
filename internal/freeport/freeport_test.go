package freeport

import (
	"net"
	"strconv"
	"testing"
)

func TestPick(t *testing.T) {
	lo, hi := window()
	ports := Get(t, 20)
	seen := map[int]bool{}
	for _, p := range ports {
		if seen[p] {
			t.Fatalf("port %d picked twice: %v", p, ports)
		}
		seen[p] = true
		if hi > lo && (p < lo || p > hi) {
			t.Errorf("port %d outside %d-%d (below the ephemeral range)", p, lo, hi)
		}
		l, err := net.Listen("tcp", net.JoinHostPort("127.0.0.1", strconv.Itoa(p)))
		if err != nil {
			t.Errorf("port %d is not free after Pick: %v", p, err)
			continue
		}
		l.Close()
	}
	if hi <= lo {
		t.Logf("no window below the ephemeral range here: the kernel chose")
	}
}
