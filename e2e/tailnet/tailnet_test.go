package tailnet

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/messages"
)

// TestFleetOverTailnet: a tsnet controller and three tsnet agents (in this
// process, against Headscale). The agents enroll and are online over the
// tailnet; NATS answers on no TCP port of the namespace; tailnet facts
// reach `status --json` and the table; a node deleted from Headscale goes
// offline and stays so while the others stay online.
func TestFleetOverTailnet(t *testing.T) {
	h := needHeadscale(t)
	ctx := testCtx(t, 5*time.Minute)
	user, key := tailnetUser(t, ctx, h, "fleet")
	dir := shortDir(t)
	data := filepath.Join(dir, "ctl")
	_, cli := startController(t, controller.Options{DataDir: data, Listen: "127.0.0.1:4222", HTTP: "",
		Tailnet: controller.TailnetOptions{Enabled: true, AuthKey: key, ControlURL: h.URL()}})
	info, err := runinfo.Read(data)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(info.NATSURL, "nats://100.") || info.LocalSocket == "" || info.TailnetHostname != "guildnet-controller" {
		t.Fatalf("runinfo = %+v: want the tailnet URL, a local socket and the tailnet hostname", info)
	}
	if st, err := os.Stat(info.LocalSocket); err != nil || st.Mode().Perm() != 0o600 {
		t.Fatalf("local socket %s: %v, mode %v (want 0600)", info.LocalSocket, err, st.Mode().Perm())
	}
	tok := token(t, cli)

	// The third agent joins with a single-use key: once deleted from
	// Headscale it cannot register again.
	once, err := h.CreatePreAuthKey(ctx, user.ID, false, false, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	names := []string{"tn-a1", "tn-a2", "tn-a3"}
	agents := map[string]*inProcAgent{}
	var mu sync.Mutex
	var wg sync.WaitGroup
	t0 := time.Now()
	for i, name := range names {
		k := key
		if i == 2 {
			k = once
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			a := startAgent(t, agent.Config{Name: name, Cluster: "tn", ControllerURL: "nats://guildnet-controller:4222",
				Token: tok, StateDir: filepath.Join(dir, name), Version: "test",
				Tailnet: agent.TailnetConfig{Mode: agent.TailnetTSNet, AuthKey: k, ControlURL: h.URL(), ProbeEvery: time.Second}})
			mu.Lock()
			agents[name] = a
			mu.Unlock()
		}()
	}
	wg.Wait()
	poll.Until(t, 2*time.Minute, "three agents online over the tailnet", func() bool { return onlineCount(status(t, cli), names...) == 3 })
	t.Logf("3 agents joined the tailnet, enrolled and online in %v", time.Since(t0).Round(time.Millisecond))

	t.Run("tasks run over the tailnet", func(t *testing.T) {
		rep, err := cli.Run(ctx, messages.RunRequest{Target: "cluster=tn", Kind: "ping", Timeout: "20s"})
		if err != nil {
			t.Fatal(err)
		}
		res, err := cli.Wait(ctx, rep.TaskID)
		if err != nil {
			t.Fatal(err)
		}
		if len(res.Results) != 3 {
			t.Fatalf("ping: %d results, want 3", len(res.Results))
		}
		for _, r := range res.Results {
			if r.Outcome != messages.OutcomeOK {
				t.Errorf("ping on %s: %s %s", r.Node, r.Outcome, r.Reason)
			}
		}
	})

	t.Run("no NATS on any TCP port of the host", func(t *testing.T) {
		if natsAnswers("127.0.0.1:4222") {
			t.Error("NATS answers on 127.0.0.1:4222 (the --listen it was given)")
		}
		ports := listeningTCP(t)
		if len(ports) == 0 {
			t.Fatal("no listening sockets found at all: the scan is broken (Headscale listens)")
		}
		for _, addr := range ports {
			if natsAnswers(addr) {
				t.Errorf("NATS answers on %s", addr)
			}
		}
		t.Logf("dialed %d listening TCP sockets (Headscale's); none is NATS", len(ports))
	})

	t.Run("tailnet facts in status --json", func(t *testing.T) {
		var st messages.StatusReply
		poll.Until(t, 30*time.Second, "every node reports a measured path", func() bool {
			out, _ := cliRun(t, "status", "--data-dir", data, "--json")
			st = messages.StatusReply{}
			if json.Unmarshal([]byte(out), &st) != nil {
				return false
			}
			for _, name := range names {
				n, ok := nodeState(st, name)
				if !ok || n.Tailnet == nil || (n.Tailnet.Path != messages.PathDirect && n.Tailnet.Path != messages.PathDERP) {
					return false
				}
			}
			return true
		})
		for _, name := range names {
			n, _ := nodeState(st, name)
			tf := n.Tailnet
			t.Logf("%s: %s", name, fmtFacts(tf))
			if tf.Mode != messages.TailnetTSNet || tf.Hostname != name || len(tf.IPs) == 0 || tf.RTTMS <= 0 {
				t.Errorf("%s: tailnet facts %s: want mode tsnet, its hostname, IPs and an RTT", name, fmtFacts(tf))
			}
			if !strings.HasPrefix(info.NATSURL, "nats://"+tf.ControllerIP+":") {
				t.Errorf("%s: controller_ip %s, want the controller's tailnet IP (%s)", name, tf.ControllerIP, info.NATSURL)
			}
			if n.Facts.Tailnet == nil || len(n.Facts.TailnetIPs) == 0 {
				t.Errorf("%s: facts.tailnet / facts.tailnet_ips missing: %+v", name, n.Facts)
			}
		}
		out, code := cliRun(t, "status", "--data-dir", data)
		if code != 0 || !strings.Contains(out, "TAILNET") || !strings.Contains(out, "tn-a1 ") {
			t.Errorf("status table (exit %d) lacks the TAILNET column:\n%s", code, out)
		}
		t.Logf("status:\n%s", out)
	})

	t.Run("deleted from Headscale goes offline", func(t *testing.T) {
		node, err := h.NodeByName(ctx, "tn-a3")
		if err != nil {
			t.Fatal(err)
		}
		t0 := time.Now()
		if err := h.DeleteNode(ctx, node.ID); err != nil {
			t.Fatal(err)
		}
		poll.Until(t, time.Minute, "tn-a3 offline", func() bool {
			n, _ := nodeState(status(t, cli), "tn-a3")
			return n.State == messages.StateOffline
		})
		t.Logf("tn-a3 offline %v after its deletion from Headscale", time.Since(t0).Round(time.Millisecond))
		time.Sleep(3 * time.Second) // it must stay away (a duration: nothing to wait for)
		st := status(t, cli)
		if n, _ := nodeState(st, "tn-a3"); n.State != messages.StateOffline {
			t.Errorf("tn-a3 came back: %s", n.State)
		}
		if k := onlineCount(st, "tn-a1", "tn-a2"); k != 2 {
			t.Errorf("%d of the other agents online, want 2", k)
		}
	})
}

// TestRestartRejoins: controller and agents as processes. After a kill -9
// of all of them, they restart without auth keys or join tokens and rejoin
// from their stored tailnet and node state. The controller process serves
// NATS on no TCP port either.
func TestRestartRejoins(t *testing.T) {
	h := needHeadscale(t)
	binaries(t)
	ctx := testCtx(t, 5*time.Minute)
	_, key := tailnetUser(t, ctx, h, "restart")
	dir := shortDir(t)
	data := filepath.Join(dir, "ctl")
	serve := func(env ...string) *proc {
		os.Remove(filepath.Join(data, "controller.json")) // a kill -9 leaves it behind
		p := startProc(t, "controller", env, "serve", "--tailnet", "--ts-hostname", "ctl-restart", "--data-dir", data,
			"--http", "", "--heartbeat-interval", hb.String(), "--sweep-interval", "-1s")
		poll.Until(t, 90*time.Second, "controller up", func() bool { _, err := runinfo.Read(data); return err == nil })
		return p
	}
	t0 := time.Now()
	ctl := serve("TS_AUTHKEY="+key, "TS_LOGIN_SERVER="+h.URL())
	t.Logf("controller process joined and serving in %v", time.Since(t0).Round(time.Millisecond))
	out, code := cliRun(t, "token", "create", "--data-dir", data, "--reusable")
	if code != 0 {
		t.Fatalf("token create: exit %d", code)
	}
	lines := strings.Split(strings.TrimSpace(out), "\n")
	tok := lines[len(lines)-1]

	names := []string{"rs-a1", "rs-a2"}
	run := func(name string, first bool) *proc {
		args := []string{"run", "--tailnet", "--controller", "nats://ctl-restart:4222", "--name", name,
			"--cluster", "rs", "--state-dir", filepath.Join(dir, name), "--ts-probe-every", "1s"}
		var env []string
		if first {
			args = append(args, "--token", tok, "--ts-login-server", h.URL())
			env = []string{"TS_AUTHKEY=" + key}
		}
		return startProc(t, "agent", env, args...)
	}
	procs := map[string]*proc{}
	for _, n := range names {
		procs[n] = run(n, true)
	}
	online := func() int {
		out, _ := cliRun(t, "status", "--data-dir", data, "--json")
		var st messages.StatusReply
		json.Unmarshal([]byte(out), &st)
		return onlineCount(st, names...)
	}
	poll.Until(t, 2*time.Minute, "two agent processes online", func() bool { return online() == 2 })
	t.Logf("controller + 2 agent processes online in %v", time.Since(t0).Round(time.Millisecond))
	for _, addr := range listeningTCP(t) {
		if natsAnswers(addr) {
			t.Errorf("NATS answers on %s (controller process, --tailnet)", addr)
		}
	}
	if strings.Contains(ctl.output(), key) {
		t.Error("the controller logged its auth key")
	}

	// kill -9 everything, then start it all again with no credentials.
	ctl.kill()
	for _, p := range procs {
		p.kill()
	}
	t0 = time.Now()
	serve()
	for _, n := range names {
		procs[n] = run(n, false)
	}
	poll.Until(t, 2*time.Minute, "both agents online again after the restart", func() bool { return online() == 2 })
	t.Logf("after kill -9 of all: rejoined from stored state and online in %v", time.Since(t0).Round(time.Millisecond))
	for _, p := range procs {
		if strings.Contains(p.output(), key) {
			t.Error("an agent logged its auth key")
		}
	}
	for _, f := range []string{filepath.Join(data, "tailnet", "logs", "tsnet.log"), filepath.Join(dir, "rs-a1", "tailnet", "logs", "tsnet.log")} {
		b, err := os.ReadFile(f)
		if err != nil {
			t.Errorf("tsnet log: %v", err)
		} else if strings.Contains(string(b), key) {
			t.Errorf("%s holds the auth key", f)
		}
	}
}

// TestListenOnHostTailscaled: --listen tailnet asks the host's tailscaled
// (here a stand-in LocalAPI on a unix socket) for the host's tailnet IP and
// serves there.
func TestListenOnHostTailscaled(t *testing.T) {
	dir := shortDir(t)
	sock := filepath.Join(dir, "tailscaled.sock")
	stopAPI := fakeLocalAPI(t, sock, "127.0.0.9")
	defer stopAPI()
	c, cli := startController(t, controller.Options{DataDir: filepath.Join(dir, "ctl"), Listen: "tailnet:0", HTTP: "",
		Tailnet: controller.TailnetOptions{TailscaledSocket: sock}})
	if !strings.HasPrefix(c.Info().NATSURL, "nats://127.0.0.9:") {
		t.Fatalf("nats url %s: want the tailnet IP tailscaled reported (127.0.0.9)", c.Info().NATSURL)
	}
	if _, err := cli.Status(context.Background()); err != nil {
		t.Fatal(err)
	}
	// Nothing listens on the other loopback addresses.
	port := strings.TrimPrefix(c.Info().NATSURL, "nats://127.0.0.9:")
	if natsAnswers(net.JoinHostPort("127.0.0.1", port)) {
		t.Error("NATS answers on 127.0.0.1 too")
	}

	// An agent on a host whose tailscaled runs dials through the kernel
	// and reports the path tailscaled measured.
	t.Run("agent uses the host's tailscaled", func(t *testing.T) {
		startAgent(t, agent.Config{Name: "host-a1", ControllerURL: c.Info().NATSURL, Token: token(t, cli),
			StateDir: filepath.Join(dir, "host-a1"), Version: "test",
			Tailnet: agent.TailnetConfig{Mode: agent.TailnetHost, TailscaledSocket: sock, ProbeEvery: 200 * time.Millisecond}})
		var n messages.NodeStatus
		poll.Until(t, 30*time.Second, "host-a1 online with a measured path", func() bool {
			n, _ = nodeState(status(t, cli), "host-a1")
			return n.State == messages.StateOnline && n.Tailnet != nil && n.Tailnet.Path == messages.PathDERP
		})
		tf := n.Tailnet
		if tf.Mode != messages.TailnetHost || tf.DERPRegion != "headscale" || tf.RTTMS != 1.25 || tf.ControllerIP != "127.0.0.9" {
			t.Fatalf("tailnet facts %s: want host mode, derp(headscale), 1.25ms to 127.0.0.9", fmtFacts(tf))
		}
	})

	// auto does not take a loopback controller URL for a tailnet one (a
	// developer's laptop running Tailscale and a local controller).
	t.Run("auto with a loopback controller stays off the tailnet", func(t *testing.T) {
		a := startAgent(t, agent.Config{Name: "auto-a2", ControllerURL: c.Info().NATSURL, Token: token(t, cli),
			StateDir: filepath.Join(dir, "auto-a2"), Version: "test",
			Tailnet: agent.TailnetConfig{Mode: agent.TailnetAuto, TailscaledSocket: sock}})
		poll.Until(t, 30*time.Second, "auto-a2 online", func() bool { return onlineCount(status(t, cli), "auto-a2") == 1 })
		if tf := a.a.TailnetFacts(); tf != nil {
			t.Fatalf("tailnet facts %s for a loopback controller", fmtFacts(tf))
		}
	})

	t.Run("tailscaled not running", func(t *testing.T) {
		_, err := controller.Start(context.Background(), controller.Options{DataDir: filepath.Join(dir, "ctl2"), Listen: "tailnet", HTTP: "",
			Tailnet: controller.TailnetOptions{TailscaledSocket: filepath.Join(dir, "none.sock")}})
		if err == nil || !strings.Contains(err.Error(), "tailnet address") || !strings.Contains(err.Error(), "no tailscaled") {
			t.Fatalf("err = %v, want a clear error about finding the tailnet address", err)
		}
	})
}

// TestAgentFlagsRefuseLoopbackOverTSNet: tsnet cannot reach the host's
// loopback, so an agent told to use it with a loopback controller URL
// says so instead of hanging.
func TestAgentRefusesLoopbackOverTSNet(t *testing.T) {
	a, err := agent.New(agent.Config{Name: "lb", ControllerURL: "nats://127.0.0.1:4222", Token: "mgnt_x",
		StateDir: t.TempDir(), Journal: agent.NewMemJournal(), Tailnet: agent.TailnetConfig{Mode: agent.TailnetTSNet}})
	if err != nil {
		t.Fatal(err)
	}
	err = a.Run(context.Background())
	if err == nil || !strings.Contains(err.Error(), "loopback") {
		t.Fatalf("err = %v, want a refusal naming loopback", err)
	}
}
