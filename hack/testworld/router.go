package main

import (
	"context"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

// GuildNet's router defaults (TS_ROUTES, TS_HOSTNAME).
const (
	routerHostname = "guildnet-router"
	routerRoutes   = "10.0.0.0/24,10.96.0.0/12,10.244.0.0/16"
)

// startRouter runs the tailnet router node as GuildNet's setup does
// (advertising TS_ROUTES), inside its own loopback-only namespace through
// `testworld exec`, and approves its routes on Headscale
// (METAGN_AUTO_APPROVE_ROUTES=true). The routes are only announced: nothing
// in the namespace forwards to them.
func (w *world) startRouter(ctx context.Context, authKey string) error {
	if err := probeNetNS(); err != nil {
		log("no tailnet router: cannot make a network namespace here (%v); run as root for it", err)
		w.add("TS_ROUTES", "", "NOT AVAILABLE: no network namespace, so no tailnet router node")
		return nil
	}
	self, err := os.Executable()
	if err != nil {
		return err
	}
	logPath := filepath.Join(w.dir, "router.log")
	lf, err := os.OpenFile(logPath, os.O_CREATE|os.O_WRONLY|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer lf.Close()
	cmd := exec.Command(self, "exec", "--dir", w.dir, "--", self, "router", "--dir", w.dir)
	cmd.Stdout, cmd.Stderr = lf, lf
	cmd.Env = append(os.Environ(), "TS_AUTHKEY="+authKey, "TS_LOGIN_SERVER="+w.hs.URL())
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("start router: %w", err)
	}
	done := make(chan struct{})
	go func() { _ = cmd.Wait(); close(done) }()
	w.closers = append(w.closers, func() {
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
		select {
		case <-done:
		case <-time.After(5 * time.Second):
			_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	var node testenv.HeadscaleNode
	tick := time.NewTicker(200 * time.Millisecond)
	defer tick.Stop()
	for {
		n, err := w.hs.NodeByName(ctx, routerHostname)
		if err == nil && len(n.AvailableRoutes) > 0 {
			node = n
			break
		}
		select {
		case <-done:
			return fmt.Errorf("router exited; log:\n%s", tail(logPath, 30))
		case <-ctx.Done():
			return fmt.Errorf("router did not register its routes: %w; log:\n%s", ctx.Err(), tail(logPath, 30))
		case <-tick.C:
		}
	}
	if err := w.hs.ApproveRoutes(ctx, node.ID, node.AvailableRoutes...); err != nil {
		return err
	}
	w.add("TS_ROUTES", routerRoutes, fmt.Sprintf("advertised by tailnet node %s (headscale id %d), approved", routerHostname, node.ID))
	w.add("TS_HOSTNAME", routerHostname, "")
	log("router %s joined (id %d), routes %v approved", routerHostname, node.ID, node.AvailableRoutes)
	return nil
}

// router is the process inside the namespace: a tsnet node that advertises
// the routes and stays up until signalled.
func router(dir string) error {
	var routes []netip.Prefix
	for _, r := range strings.Split(routerRoutes, ",") {
		routes = append(routes, netip.MustParsePrefix(r))
	}
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	srv, st, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{
		ControlURL:      os.Getenv("TS_LOGIN_SERVER"),
		AuthKey:         os.Getenv("TS_AUTHKEY"),
		Hostname:        routerHostname,
		Dir:             filepath.Join(dir, "router"),
		AdvertiseRoutes: routes,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	fmt.Printf("router up: %v advertising %v\n", st.TailscaleIPs, routes)
	<-ctx.Done()
	return nil
}

// probeNetNS checks that this process may make a network namespace.
func probeNetNS() error {
	cmd := exec.Command("/bin/true")
	cmd.SysProcAttr = &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}
	return cmd.Run()
}
