package controller_test

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
)

func startRelay(t *testing.T, hub, listen, secret string) *controller.Relay {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	r, err := controller.StartRelay(ctx, controller.RelayOptions{Hub: []string{hub}, Listen: listen, SecretFile: secret,
		Log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named("relay")})
	if err != nil {
		t.Fatalf("relay: %v", err)
	}
	t.Cleanup(r.Close)
	select {
	case <-r.Synced():
	case <-time.After(20 * time.Second):
		t.Fatal("the relay did not get the hub's nodes")
	}
	return r
}

// TestRelay: agents behind a relay (a leaf node) are reached through one
// leaf link, run tasks and beat as if connected to the hub; an agent
// behind the relay cannot act as another; a relay restart loses nothing.
func TestRelay(t *testing.T) {
	ports := freePorts(t, 1)
	var secret string
	f := newFleet(t, func(o *controller.Options) {
		o.SweepInterval = -1
		o.LeafListen = fmt.Sprintf("127.0.0.1:%d", ports[0])
		secret = filepath.Join(filepath.Dir(o.DataDir), "relay.secret")
		o.RelaySecretFile = secret
		if err := os.WriteFile(secret, []byte("relay-secret-0123456789abcdef\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	hub := fmt.Sprintf("nats://127.0.0.1:%d", ports[0])
	tok := f.token(true, "1h")
	// Enrollment goes to the hub; afterwards the agents live behind the relay.
	var cfgs = map[string]struct{}{"a": {}, "b": {}, "c": {}}
	for n := range cfgs {
		ta := f.runAgent(f.agentCfg(n, "site1", tok))
		f.waitOnline(n)
		ta.stop()
	}
	r := startRelay(t, hub, "127.0.0.1:0", secret)
	relayURL := r.URL()
	agents := map[string]*testAgent{}
	for n := range cfgs {
		cfg := f.agentCfg(n, "site1", "")
		cfg.ControllerURL = relayURL
		agents[n] = f.runAgent(cfg)
	}
	f.waitOnline("a", "b", "c")
	if n := f.c.Server().NumLeafNodes(); n != 1 {
		t.Fatalf("the hub has %d leaf links, want 1", n)
	}
	for _, res := range f.run(messages.RunRequest{Target: "all", Kind: "ping", Timeout: "20s"}).Results {
		if res.Outcome != messages.OutcomeOK {
			t.Fatalf("ping through the relay: %s %s %s", res.Node, res.Outcome, res.Reason)
		}
	}

	// Impersonation: with a's key at the relay, act as b.
	agents["b"].stop()
	kp, pub := agentKey(t, f, "a")
	errs := make(chan error, 16)
	evil, err := nats.Connect(relayURL, nats.Nkey(pub, kp.Sign), nats.CustomInboxPrefix(messages.NodeInbox("a")),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case errs <- err:
			default:
			}
		}))
	if err != nil {
		t.Fatalf("a's own key at the relay: %v", err)
	}
	defer evil.Close()
	if _, err := evil.Subscribe(messages.TaskSubject("b"), func(*nats.Msg) {}); err == nil {
		evil.Flush()
	}
	select {
	case err := <-errs:
		if !strings.Contains(strings.ToLower(err.Error()), "permissions violation") {
			t.Fatalf("subscribe to b's tasks: %v", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("a subscribed to b's tasks at the relay without a permissions violation")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	rr, err := f.cli.Run(ctx, messages.RunRequest{Target: "b", Kind: "ping", Timeout: "2s"})
	if err != nil {
		t.Fatal(err)
	}
	forged := messages.MustEncode(&messages.Result{V: messages.Version, TaskID: rr.TaskID, Node: "b", Outcome: messages.OutcomeOK})
	evil.Publish(messages.ResultSubject("b"), forged)
	evil.Publish(messages.HeartbeatSubject("b"), []byte(`{"v":1}`))
	evil.Flush()
	rep, err := f.cli.Wait(ctx, rr.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if got := rep.Results[0]; got.Outcome == messages.OutcomeOK {
		t.Fatalf("a forged b's result through the relay: %+v", got)
	}
	evil.Close()

	// A relay restart loses nothing: a task running when the relay goes
	// away finishes with the agents' real outcomes once it is back.
	rr, err = f.cli.Run(ctx, messages.RunRequest{Target: "name=a", Kind: "sleep", Args: json.RawMessage(`{"duration":"1s"}`), Timeout: "30s"})
	if err != nil {
		rr, err = f.cli.Run(ctx, messages.RunRequest{Target: "a", Kind: "sleep", Args: json.RawMessage(`{"duration":"1s"}`), Timeout: "30s"})
	}
	if err != nil {
		t.Fatal(err)
	}
	r.Close()
	listen := strings.TrimPrefix(relayURL, "nats://")
	var r2 *controller.Relay
	poll.Until(t, 20*time.Second, "relay back on its port", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		var err error
		r2, err = controller.StartRelay(ctx, controller.RelayOptions{Hub: []string{hub}, Listen: listen, SecretFile: secret,
			Log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named("relay2")})
		return err == nil
	})
	t.Cleanup(r2.Close)
	rep, err = f.cli.Wait(ctx, rr.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	for _, res := range rep.Results {
		if res.Outcome != messages.OutcomeOK {
			t.Fatalf("after the relay restart: %s %s %s", res.Node, res.Outcome, res.Reason)
		}
	}
	f.waitOnline("a", "c")
}
