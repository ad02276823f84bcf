package tasks

import (
	"slices"
	"testing"
)

// The two-dump netlink listing finds exactly what the net package finds
// interface by interface.
func TestUpIPsMatchesNetPackage(t *testing.T) {
	key := func(f func() []string) []string {
		s := f()
		slices.Sort(s)
		return s
	}
	fast := key(func() (out []string) {
		for _, ip := range upIPs() {
			out = append(out, ip.String())
		}
		return out
	})
	ref := key(func() (out []string) {
		for _, ip := range upIPsPortable() {
			out = append(out, ip.String())
		}
		return out
	})
	if len(ref) == 0 {
		t.Fatal("no addresses at all (not even loopback)")
	}
	if !slices.Equal(fast, ref) {
		t.Fatalf("upIPs %v, net package %v", fast, ref)
	}
	f := CollectFacts("test")
	if f.MemoryBytes == 0 || f.BootTime == 0 || len(f.Addresses) == 0 {
		t.Fatalf("facts: %+v", f)
	}
}
