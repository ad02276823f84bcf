package testenv

import (
	"fmt"
	"net/netip"
	"os"
	"testing"
	"time"

	"tailscale.com/ipn"

	waitfor "github.com/guildnet/metaguildnet/internal/poll" // poll is this package's own wait
)

// TestTailscaled: a real tailscaled starts logged out with its LocalAPI on
// a socket file, logs in to Headscale through that LocalAPI with routes,
// keeps its login across a restart, and Close leaves nothing running.
func TestTailscaled(t *testing.T) {
	Require(t, NeedTailscaled, NeedHeadscale, NeedNetNS)
	h := startHeadscale(t)
	ctx := testCtx(t, 3*time.Minute)
	// Wrap runs the daemon through a command (for the background world,
	// `testworld exec --dir D --`); env(1) stands in for it here.
	td, err := StartTailscaled(ctx, TailscaledOptions{Dir: t.TempDir(), Wrap: []string{"env", "MGN_WRAPPED=1"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(td.Close)
	t.Logf("tailscaled %s LocalAPI answering in %v", TailscaleVersion, td.StartedIn)
	if st, err := os.Stat(td.Socket()); err != nil || st.Mode()&os.ModeSocket == 0 {
		t.Fatalf("socket %s: %v %v", td.Socket(), st, err)
	}
	lc := td.LocalClient()
	st, err := lc.StatusWithoutPeers(ctx)
	if err != nil || st.BackendState != ipn.NeedsLogin.String() {
		t.Fatalf("fresh tailscaled: %v %v, want NeedsLogin", st, err)
	}

	u, err := h.CreateUser(ctx, "cluster-c1")
	if err != nil {
		t.Fatal(err)
	}
	key, err := h.CreatePreAuthKey(ctx, u.ID, false, false, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	route := netip.MustParsePrefix("10.96.0.0/12")
	st, err = td.Login(ctx, TailscaledLogin{ControlURL: h.URL(), AuthKey: key, Hostname: "n1", AdvertiseRoutes: []netip.Prefix{route}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("logged in as %v in %v", st.TailscaleIPs, time.Since(start))
	if !st.TailscaleIPs[0].Is4() || !netip.MustParsePrefix("100.64.0.0/10").Contains(st.TailscaleIPs[0]) {
		t.Fatalf("tailnet IP %v", st.TailscaleIPs)
	}
	n, err := h.NodeByName(ctx, "n1")
	if err != nil {
		t.Fatal(err)
	}
	// The advertised route reaches Headscale (from the node's Hostinfo).
	waitfor.Until(t, 30*time.Second, "the advertised route on Headscale", func() bool {
		if len(n.AvailableRoutes) > 0 {
			return true
		}
		if n, err = h.NodeByName(ctx, "n1"); err != nil {
			t.Fatal(err)
		}
		return len(n.AvailableRoutes) > 0
	})
	if len(n.AvailableRoutes) != 1 || n.AvailableRoutes[0] != route.String() {
		t.Fatalf("available routes on Headscale %v, want [%s]", n.AvailableRoutes, route)
	}

	td.Stop()
	if _, err := lc.StatusWithoutPeers(ctx); err == nil {
		t.Fatal("LocalAPI still answers after Stop")
	}
	if err := td.Start(ctx); err != nil {
		t.Fatal(err)
	}
	waitfor.UntilOK(t, 30*time.Second, "Running with the kept login after a restart", func() error {
		st, err := lc.StatusWithoutPeers(ctx)
		if err != nil {
			return err
		}
		if st.BackendState != ipn.Running.String() {
			return fmt.Errorf("backend state %s", st.BackendState)
		}
		return nil
	})
	if n2, err := h.NodeByName(ctx, "n1"); err != nil || n2.ID != n.ID {
		t.Fatalf("after a restart the node is %+v (%v), want the same id %d", n2, err, n.ID)
	}
	td.Close()
	if td.proc.exited() == false {
		t.Fatal("tailscaled still running after Close")
	}
}
