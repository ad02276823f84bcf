package controller_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nkeys"
	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
)

// relayHub is a single controller serving leaf links, and the secret its
// relays use.
func relayHub(t *testing.T) (f *fleet, hub, secret string) {
	t.Helper()
	ports := freePorts(t, 1)
	f = newFleet(t, func(o *controller.Options) {
		o.SweepInterval = -1
		o.LeafListen = fmt.Sprintf("127.0.0.1:%d", ports[0])
		secret = filepath.Join(filepath.Dir(o.DataDir), "relay.secret")
		o.RelaySecretFile = secret
		if err := os.WriteFile(secret, []byte("relay-secret-0123456789abcdef\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	})
	return f, fmt.Sprintf("nats://127.0.0.1:%d", ports[0]), secret
}

// startAgent runs a real agent and returns the channel its Run's error
// arrives on.
func startAgent(t *testing.T, cfg agent.Config) <-chan error {
	t.Helper()
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("agent %s: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan error, 1)
	stopped := make(chan struct{})
	go func() { done <- a.Run(ctx); close(stopped) }()
	t.Cleanup(func() { cancel(); <-stopped })
	return done
}

// rawConn is a plain NATS client with key kp (and a token, if any) that
// records the server's asynchronous errors (permission violations).
type rawConn struct {
	nc   *nats.Conn
	errs chan error
}

func dialRaw(url string, kp nkeys.KeyPair, token, inbox string) (*rawConn, error) {
	pub, _ := kp.PublicKey()
	rc := &rawConn{errs: make(chan error, 64)}
	opts := []nats.Option{nats.Nkey(pub, kp.Sign), nats.NoReconnect(), nats.Timeout(5 * time.Second),
		nats.ErrorHandler(func(_ *nats.Conn, _ *nats.Subscription, err error) {
			select {
			case rc.errs <- err:
			default:
			}
		})}
	if token != "" {
		opts = append(opts, nats.Token(token))
	}
	if inbox != "" {
		opts = append(opts, nats.CustomInboxPrefix(inbox))
	}
	var err error
	rc.nc, err = nats.Connect(url, opts...)
	return rc, err
}

// denied reports whether the server answered with a permissions violation
// that names subject within 5 s.
func (rc *rawConn) denied(subject string) bool {
	deadline := time.After(5 * time.Second)
	for {
		select {
		case err := <-rc.errs:
			if s := strings.ToLower(err.Error()); strings.Contains(s, "permissions violation") && strings.Contains(err.Error(), subject) {
				return true
			}
		case <-deadline:
			return false
		}
	}
}

func freshKey(t *testing.T) (nkeys.KeyPair, string) {
	t.Helper()
	kp, err := nkeys.CreateUser()
	if err != nil {
		t.Fatal(err)
	}
	pub, _ := kp.PublicKey()
	return kp, pub
}

// connsOf counts the open connections of key pub on ns.
func connsOf(t *testing.T, ns *server.Server, pub string) int {
	t.Helper()
	cz, err := ns.Connz(&server.ConnzOptions{State: server.ConnOpen, User: pub, Limit: 1 << 16})
	if err != nil {
		t.Fatal(err)
	}
	return len(cz.Conns)
}

// relayRefused reads the relay's mgn_messages_refused_total{kind="connect",reason}.
func relayRefused(t *testing.T, r *controller.Relay, reason string) float64 {
	t.Helper()
	mfs, err := r.Metrics().Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, mf := range mfs {
		if mf.GetName() != "mgn_messages_refused_total" {
			continue
		}
		for _, m := range mf.GetMetric() {
			labels := map[string]string{}
			for _, l := range m.GetLabel() {
				labels[l.GetName()] = l.GetValue()
			}
			if labels["kind"] == "connect" && labels["reason"] == reason {
				return m.GetCounter().GetValue()
			}
		}
	}
	return 0
}

// TestRelayEnroll: an agent that knows only the relay enrolls there with a
// single-use join token, as at the hub, and comes online through it (the
// hub never sees a connection of its own); the token is spent (a second
// agent with it is refused at the relay); a bad or expired token is
// refused at the relay, counted, and leaves no enrollment connection; an
// agent that lost its first answer gets it again with its own spent
// token; a relay-admitted enrollment connection cannot ask for another
// key, read another's inbox or act as a node.
func TestRelayEnroll(t *testing.T) {
	f, hub, secret := relayHub(t)
	r := startRelay(t, hub, "127.0.0.1:0", secret)
	if !r.AuthReady() {
		// Until then every connection at the relay waited authReadyWait
		// (1.5 s) in its authenticator.
		t.Fatal("the relay has the hub's keys but its authenticator still holds connections for them")
	}
	relayURL := r.URL()
	single := f.token(false, "1h")

	start := time.Now()
	cfg := f.agentCfg("a", "site1", single)
	cfg.ControllerURL = relayURL
	doneA := startAgent(t, cfg)
	poll.Until(t, 20*time.Second, "a enrolled through the relay and online", func() bool { return f.state("a") == messages.StateOnline })
	t.Logf("RELAY-ENROLL-FIGURE enroll through the relay to online: %v", time.Since(start).Round(time.Millisecond))
	akp, apub := agentKey(t, f, "a")
	if n := connsOf(t, f.c.Server(), apub); n != 0 {
		t.Fatalf("a has %d connection(s) to the hub itself", n)
	}
	poll.Until(t, 5*time.Second, "a's one connection at the relay", func() bool { return connsOf(t, r.Server(), apub) == 1 })
	t.Logf("RELAY-ENROLL-FIGURE agent start to its node connection at the relay: %v", time.Since(start).Round(time.Millisecond))
	if rep := f.run(messages.RunRequest{Target: "a", Kind: "ping", Timeout: "20s"}); rep.Results[0].Outcome != messages.OutcomeOK {
		t.Fatalf("ping a through the relay: %+v", rep.Results)
	}
	select {
	case err := <-doneA:
		t.Fatalf("agent a stopped: %v", err)
	default:
	}
	if got := relayRefused(t, r, "unknown_key"); got > 0 {
		t.Logf("a's first connection with its new key was refused %v time(s) before the relay learnt it", got)
	}

	// A join token whose URLs name the relay (`token create --url`): an
	// agent given only the token dials the relay, enrolls and runs there.
	ctx0, cancel0 := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel0()
	viaTok, err := f.cli.TokenCreateWith(ctx0, messages.TokenCreateRequest{TTL: "1h", URLs: []string{relayURL}})
	if err != nil {
		t.Fatal(err)
	}
	if jt, err := messages.ParseJoinToken(viaTok.Token); err != nil || len(jt.URLs) != 1 || jt.URLs[0] != relayURL {
		t.Fatalf("token's URLs: %+v %v, want [%s]", jt.URLs, err, relayURL)
	}
	cfg = f.agentCfg("t", "site1", viaTok.Token)
	cfg.ControllerURL, cfg.ControllerFromToken = "nats://127.0.0.1:1", true // as `agent run` without --controller
	startAgent(t, cfg)
	_, tpub := agentKey(t, f, "t")
	poll.Until(t, 20*time.Second, "t enrolled with a token naming the relay, connected there", func() bool {
		return f.state("t") == messages.StateOnline && connsOf(t, r.Server(), tpub) == 1
	})
	if n := connsOf(t, f.c.Server(), tpub); n != 0 {
		t.Fatalf("t has %d connection(s) to the hub itself", n)
	}

	// The single-use token is spent: a second agent with it is refused at
	// the relay, for good.
	cfg = f.agentCfg("b", "site1", single)
	cfg.ControllerURL = relayURL
	select {
	case err := <-startAgent(t, cfg):
		if !errors.Is(err, agent.ErrEnrollRefused) {
			t.Fatalf("second agent with a spent token: %v, want ErrEnrollRefused", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("a second agent with a spent single-use token was not refused at the relay")
	}
	if f.state("b") != "" {
		t.Fatal("b enrolled with a spent token")
	}

	// Bad and expired tokens: refused at the relay, counted there, and no
	// enrollment connection is left on the relay or the hub.
	expired := f.token(true, "1ms")
	poll.Until(t, 5*time.Second, "the short token expired", func() bool {
		rc, err := dialRaw(relayURL, mustKey(t), expired, "")
		if err == nil {
			rc.nc.Close()
		}
		return err != nil
	})
	before := relayRefused(t, r, "bad_token")
	var tried []string
	for _, tok := range []string{"mgnt_" + strings.Repeat("A", 43), expired, "not-a-token", "mgnt_" + strings.Repeat("B", 200)} {
		kp, pub := freshKey(t)
		tried = append(tried, pub)
		rc, err := dialRaw(relayURL, kp, tok, "")
		if err == nil {
			rc.nc.Close()
			t.Fatalf("token %.12s...: admitted at the relay", tok)
		}
		if !strings.Contains(strings.ToLower(err.Error()), "authorization") {
			t.Fatalf("token %.12s...: %v, want an authorization error", tok, err)
		}
	}
	if got := relayRefused(t, r, "bad_token"); got < before+4 {
		t.Fatalf("relay counted %v bad tokens, want %v", got, before+4)
	}
	for _, pub := range tried {
		if connsOf(t, r.Server(), pub)+connsOf(t, f.c.Server(), pub) != 0 {
			t.Fatalf("a connection with a refused token is left open (key %s)", pub)
		}
	}

	// An agent that never got its first answer asks again with its own
	// spent token and gets it: the same name, no token spent twice.
	again, err := dialRaw(relayURL, akp, single, messages.EnrollInbox(apub))
	if err != nil {
		t.Fatalf("a's key with its own spent token at the relay: %v", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	m, err := again.nc.RequestWithContext(ctx, messages.EnrollSubject(apub),
		messages.MustEncode(&messages.EnrollRequest{V: messages.Version, Name: "a", Cluster: "site1"}))
	if err != nil {
		t.Fatalf("a asks again through the relay: %v", err)
	}
	if rep, err := messages.Decode[messages.EnrollReply](m.Data, 0); err != nil || rep.Name != "a" {
		t.Fatalf("a's second answer: %s (%v)", m.Data, err)
	}
	again.nc.Close()

	// A relay-admitted enrollment connection is confined to its own key.
	reusable := f.token(true, "1h")
	xkp, xpub := freshKey(t)
	_, ypub := freshKey(t)
	x, err := dialRaw(relayURL, xkp, reusable, messages.EnrollInbox(xpub))
	if err != nil {
		t.Fatalf("a fresh key with a valid token at the relay: %v", err)
	}
	defer x.nc.Close()
	if n := connsOf(t, r.Server(), xpub); n != 1 {
		t.Fatalf("x has %d connections at the relay, want its enrollment connection", n)
	}
	dropped := metric(t, f, `mgn_replies_dropped_total{kind="enroll"}`)
	for _, subj := range []string{messages.EnrollSubject(ypub), messages.HeartbeatSubject("a"), messages.ResultSubject("a"),
		messages.RelayAdmitSubject, messages.RelayKeysSubject, messages.APISubject(messages.APITokenCreate)} {
		x.nc.Publish(subj, []byte(`{"v":1,"name":"evil"}`))
		x.nc.Flush()
		if !x.denied(subj) {
			t.Fatalf("an enrollment connection at the relay published %s without a permissions violation", subj)
		}
	}
	for _, subj := range []string{messages.EnrollInbox(ypub) + ".>", messages.NodeInbox("a") + ".>", messages.TaskSubject("a"), messages.RelayChangedSubject} {
		x.nc.Subscribe(subj, func(*nats.Msg) {})
		x.nc.Flush()
		if !x.denied(subj) {
			t.Fatalf("an enrollment connection at the relay subscribed to %s without a permissions violation", subj)
		}
	}
	// Its own enrollment subject with another key's inbox as the reply:
	// the relay lets the publish through (NATS does not check reply
	// subjects), the hub answers only into x's own inbox and drops it.
	if err := x.nc.PublishRequest(messages.EnrollSubject(xpub), messages.EnrollInbox(ypub)+".steal",
		messages.MustEncode(&messages.EnrollRequest{V: messages.Version, Name: "x1"})); err != nil {
		t.Fatal(err)
	}
	x.nc.Flush()
	poll.Until(t, 5*time.Second, "the hub dropped the reply into another key's inbox", func() bool {
		return metric(t, f, `mgn_replies_dropped_total{kind="enroll"}`) >= dropped+1
	})
	if f.state("x1") != "" {
		t.Fatal("a request with another key's inbox as its reply enrolled a node")
	}
}

// agentKey is the identity of the test agent name.
func agentKey(t *testing.T, f *fleet, name string) (nkeys.KeyPair, string) {
	t.Helper()
	return seedKey(t, filepath.Join(f.dir, "agents", name, "identity.seed"))
}

func mustKey(t *testing.T) nkeys.KeyPair {
	kp, _ := freshKey(t)
	return kp
}

// TestRelayEnrollHubDown: while the relay cannot reach the hub, an agent
// enrolling there is neither admitted nor refused (a refusal would end
// its enrollment as if the token were bad): it retries, and enrolls once
// the hub is back.
func TestRelayEnrollHubDown(t *testing.T) {
	f, hub, secret := relayHub(t)
	tok := f.token(false, "1h")
	r := startRelay(t, hub, "127.0.0.1:0", secret)
	cfg := f.agentCfg("late", "site1", tok)
	cfg.ControllerURL = r.URL()
	f.stop()
	poll.Until(t, 10*time.Second, "the relay's link down", func() bool { return r.Server().NumLeafNodes() == 0 })

	done := startAgent(t, cfg)
	poll.Until(t, 20*time.Second, "the relay held a connection it could not ask the hub about", func() bool {
		return relayRefused(t, r, "hub_unavailable") >= 2
	})
	select {
	case err := <-done:
		t.Fatalf("the agent gave up while the hub was down: %v", err)
	default:
	}
	if got := relayRefused(t, r, "bad_token"); got != 0 {
		t.Fatalf("the relay took an unreachable hub for a bad token %v time(s)", got)
	}

	back := time.Now()
	f.start()
	poll.Until(t, 45*time.Second, "late enrolled through the relay once the hub was back", func() bool {
		return f.state("late") == messages.StateOnline
	})
	t.Logf("RELAY-ENROLL-FIGURE hub back to the agent online through the relay: %v", time.Since(back).Round(time.Millisecond))
}

// TestRelayEnrollCluster: with a 3-controller cluster as the hub, an agent
// enrolls through a relay linked to a standby: the standby answers the
// relay's question from its copy of the tokens and tells the active
// controller, which answers the enrollment.
func TestRelayEnrollCluster(t *testing.T) {
	ports := freePorts(t, 3)
	dir := t.TempDir()
	secret := filepath.Join(dir, "relay.secret")
	if err := os.WriteFile(secret, []byte("relay-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	h := newHAClusterWith(t, func(i int, o *controller.Options) {
		o.LeafListen = fmt.Sprintf("127.0.0.1:%d", ports[i])
		o.RelaySecretFile = secret
	})
	act := h.active(30 * time.Second)
	sb := (act + 1) % 3
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	var tok string
	poll.Until(t, 10*time.Second, "token", func() bool {
		rep, err := h.cli[act].TokenCreate(ctx, "1h", false, messages.TokenScope{})
		tok = rep.Token
		return err == nil
	})
	r := startRelay(t, fmt.Sprintf("nats://127.0.0.1:%d", ports[sb]), "127.0.0.1:0", secret)
	start := time.Now()
	startAgent(t, agent.Config{ControllerURL: r.URL(), Token: tok, Name: "viarelay", Version: "test",
		StateDir: filepath.Join(h.dir, "agents", "viarelay"),
		Log:      zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named("viarelay")})
	poll.Until(t, 30*time.Second, "viarelay enrolled through a relay on a standby and online", func() bool { return h.online(act, "viarelay") })
	t.Logf("RELAY-ENROLL-FIGURE cluster, relay on a standby, enroll to online: %v", time.Since(start).Round(time.Millisecond))

	rr, err := h.cli[act].Run(ctx, messages.RunRequest{Target: "viarelay", Kind: "ping", Timeout: "20s"})
	if err != nil {
		t.Fatal(err)
	}
	rep, err := h.cli[act].Wait(ctx, rr.TaskID)
	if err != nil || len(rep.Results) != 1 || rep.Results[0].Outcome != messages.OutcomeOK {
		t.Fatalf("ping viarelay through the relay: %+v %v", rep.Results, err)
	}

	// The token is spent on every peer.
	_, err = dialRaw(r.URL(), mustKey(t), tok, "")
	if err == nil || !strings.Contains(strings.ToLower(err.Error()), "authorization") {
		t.Fatalf("a spent token at the relay: %v, want an authorization error", err)
	}
}

// TestRelayEnrollKeyNotYetKnown: right after enrolling, the agent
// connects with its new key before the relay has learnt it. Here the
// relay misses the hub's change notice altogether (it would learn the key
// only at its next periodic refresh, 30 s later): the relay remembers
// the attempt it admitted, asks for the keys when that key connects and
// holds the connection until the key is in, so the agent comes online
// through the relay at once.
func TestRelayEnrollKeyNotYetKnown(t *testing.T) {
	f, hub, secret := relayHub(t)
	r := startRelay(t, hub, "127.0.0.1:0", secret)
	if err := r.DropChangeNotices(); err != nil {
		t.Fatal(err)
	}
	cfg := f.agentCfg("fresh", "site1", f.token(false, "1h"))
	cfg.ControllerURL = r.URL()
	start := time.Now()
	done := startAgent(t, cfg)
	poll.Until(t, 20*time.Second, "fresh enrolled", func() bool { return f.state("fresh") != "" })
	_, pub := agentKey(t, f, "fresh")
	poll.Until(t, 10*time.Second, "fresh's node connection at the relay (without the change notice)", func() bool {
		return connsOf(t, r.Server(), pub) == 1
	})
	t.Logf("RELAY-ENROLL-FIGURE change notice missed: agent start to its node connection at the relay %v, refused %v time(s) first",
		time.Since(start).Round(time.Millisecond), relayRefused(t, r, "unknown_key"))
	if rep := f.run(messages.RunRequest{Target: "fresh", Kind: "ping", Timeout: "20s"}); rep.Results[0].Outcome != messages.OutcomeOK {
		t.Fatalf("ping fresh through the relay: %+v", rep.Results)
	}
	select {
	case err := <-done:
		t.Fatalf("agent stopped: %v", err)
	default:
	}
}
