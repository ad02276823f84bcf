package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/freeport"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/runinfo"
)

// TestRelayEnrollProcesses: the operator's way, with real processes. A
// hub (`controller serve --leaf-listen`), a relay (`controller relay`),
// and agents that can reach only the relay: `agent run --controller
// nats://RELAY --token-file F` enrolls through it and runs there, and so
// does an agent given only a token made with `token create --url
// nats://RELAY`. A spent single-use token is refused at the relay.
func TestRelayEnrollProcesses(t *testing.T) {
	dir := t.TempDir()
	secret := filepath.Join(dir, "relay.secret")
	if err := os.WriteFile(secret, []byte("e2e-relay-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := freeport.Get(t, 2)
	leaf, relayListen := fmt.Sprintf("127.0.0.1:%d", ports[0]), fmt.Sprintf("127.0.0.1:%d", ports[1])
	w := &world{t: t, dir: dir, data: filepath.Join(dir, "controller")}
	w.ctl = start(t, "controller", "serve", "--data-dir", w.data, "--listen", "127.0.0.1:0", "--http", "",
		"--heartbeat-interval", "200ms", "--leaf-listen", leaf, "--relay-secret-file", secret)
	poll.Until(t, 20*time.Second, "controller up", func() bool {
		info, err := runinfo.Read(w.data)
		w.url = info.NATSURL
		return err == nil
	})
	relay := start(t, "controller", "relay", "--hub", "nats://"+leaf, "--listen", relayListen, "--relay-secret-file", secret)
	poll.Until(t, 20*time.Second, "relay serving", func() bool { return strings.Contains(relay.log.String(), "relay serving") })
	relayURL := "nats://" + relayListen

	tokenCreate := func(args ...string) string {
		out, code := cli(t, append([]string{"token", "create", "--data-dir", w.data}, args...)...)
		if code != 0 {
			t.Fatalf("token create %v: exit %d", args, code)
		}
		lines := strings.Split(strings.TrimSpace(out), "\n")
		return lines[len(lines)-1]
	}
	tokenFile := func(name, tok string) string {
		file := filepath.Join(dir, name+".token")
		if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		return file
	}

	single := tokenCreate()
	began := time.Now()
	start(t, "agent", "run", "--controller", relayURL, "--name", "r1", "--cluster", "site1",
		"--state-dir", filepath.Join(dir, "r1"), "--token-file", tokenFile("r1", single))
	poll.Until(t, 30*time.Second, "r1 enrolled through the relay and online", func() bool { return w.state("r1") == "online" })
	t.Logf("RELAY-ENROLL-FIGURE processes: agent start to online through the relay %v", time.Since(began).Round(time.Millisecond))

	viaTok := tokenCreate("--url", relayURL)
	start(t, "agent", "run", "--name", "r2", "--cluster", "site1",
		"--state-dir", filepath.Join(dir, "r2"), "--token-file", tokenFile("r2", viaTok))
	poll.Until(t, 30*time.Second, "r2 (a token naming the relay) online", func() bool { return w.state("r2") == "online" })

	if out, code := cli(t, "run", "--data-dir", w.data, "--target", "cluster=site1", "ping"); code != 0 {
		t.Fatalf("ping through the relay: exit %d\n%s", code, out)
	}
	spent := start(t, "agent", "run", "--controller", relayURL, "--name", "r3", "--cluster", "site1",
		"--state-dir", filepath.Join(dir, "r3"), "--token-file", tokenFile("r3", single))
	poll.Until(t, 30*time.Second, "a spent token refused at the relay", func() bool {
		return strings.Contains(spent.log.String(), "did not accept the join token")
	})
	if w.state("r3") != "" {
		t.Fatal("r3 enrolled with a spent single-use token")
	}
	for _, p := range []*proc{w.ctl, relay} {
		if strings.Contains(p.log.String(), single[:20]) || strings.Contains(p.log.String(), viaTok[:20]) {
			t.Fatal("a join token is in a log")
		}
	}
}
