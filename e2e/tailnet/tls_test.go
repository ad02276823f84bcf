package tailnet

import (
	"context"
	"crypto/tls"
	"encoding/pem"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/internal/tlspin"
	"github.com/guildnet/metaguildnet/messages"
)

// TestTLSPinnedCA: outside the tailnet, --tls serves NATS with a CA made
// in the data dir; the join token carries the CA's pin. An agent with it
// enrolls and, restarted without the token, reconnects with the stored
// pin; an agent whose pin names another CA is refused by the agent's own
// check although its secret is valid; a plain client is refused by the
// server; the CLI keeps working through the local socket.
func TestTLSPinnedCA(t *testing.T) {
	dir := shortDir(t)
	data := filepath.Join(dir, "ctl")
	c, cli := startController(t, controller.Options{DataDir: data, Listen: "127.0.0.1:0", HTTP: "",
		TLS: controller.TLSOptions{Enabled: true}})
	info, err := runinfo.Read(data)
	if err != nil {
		t.Fatal(err)
	}
	tok := token(t, cli)
	jt, err := messages.ParseJoinToken(tok)
	if err != nil {
		t.Fatal(err)
	}
	secret, pin := jt.Secret, jt.Pin
	if !strings.HasPrefix(secret, "mgnt_") || !tlspin.ValidPin(pin) || pin != info.TLSPin {
		t.Fatalf("token %q: want mgnt_SECRET.PIN with the controller's pin %s", tok, info.TLSPin)
	}
	if len(jt.URLs) != 1 || jt.URLs[0] != info.NATSURL {
		t.Fatalf("token URLs %v, want the controller's [%s]", jt.URLs, info.NATSURL)
	}
	caPEM, err := os.ReadFile(filepath.Join(data, "tls", "ca.pem"))
	if err != nil || info.TLSCAFile != filepath.Join(data, "tls", "ca.pem") {
		t.Fatalf("CA file: %v (runinfo %q)", err, info.TLSCAFile)
	}
	if blk, _ := pem.Decode(caPEM); blk == nil || tlspin.Pin(blk.Bytes) != pin {
		t.Fatal("the token's pin is not the SHA-256 of DATA_DIR/tls/ca.pem")
	}
	if key, err := os.Stat(filepath.Join(data, "tls", "ca.key")); err != nil || key.Mode().Perm() != 0o600 {
		t.Fatalf("CA key: %v", err)
	}
	url := c.Info().NATSURL

	t.Run("pinned agent enrolls, and reconnects with the stored pin", func(t *testing.T) {
		state := filepath.Join(dir, "good")
		a := startAgent(t, agent.Config{Name: "tls-good", ControllerURL: url, Token: tok, StateDir: state, Version: "test"})
		poll.Until(t, 30*time.Second, "tls-good online", func() bool { return onlineCount(status(t, cli), "tls-good") == 1 })
		a.stop()
		if b, err := os.ReadFile(filepath.Join(state, "controller-ca.pin")); err != nil || strings.TrimSpace(string(b)) != pin {
			t.Fatalf("stored pin: %q, %v", b, err)
		}
		// Restarted with no token: only the stored pin verifies the server.
		poll.Until(t, 30*time.Second, "tls-good no longer online", func() bool { return onlineCount(status(t, cli), "tls-good") == 0 })
		startAgent(t, agent.Config{Name: "tls-good", ControllerURL: url, StateDir: state, Version: "test"})
		poll.Until(t, 30*time.Second, "tls-good online again", func() bool { return onlineCount(status(t, cli), "tls-good") == 1 })
	})

	t.Run("forged CA refused", func(t *testing.T) {
		other, err := tlspin.EnsureCA(filepath.Join(dir, "other-ca"), nil)
		if err != nil {
			t.Fatal(err)
		}
		forged := secret + "." + other.Pin
		ctx, cancel := context.WithTimeout(context.Background(), 4*time.Second)
		defer cancel()
		a, err := agent.New(agent.Config{Name: "tls-forged", ControllerURL: url, Token: forged, StateDir: filepath.Join(dir, "forged"),
			Journal: agent.NewMemJournal(), Version: "test"})
		if err != nil {
			t.Fatal(err)
		}
		a.Run(ctx) // retries until ctx ends: the controller is never trusted
		if _, ok := nodeState(status(t, cli), "tls-forged"); ok {
			t.Fatal("an agent pinned to another CA enrolled")
		}
		_, err = nats.Connect(url, nats.Secure(tlspin.ClientConfig(other.Pin)), nats.Timeout(3*time.Second), nats.NoReconnect())
		if err == nil || !errors.Is(err, tlspin.ErrNotPinned) && !strings.Contains(err.Error(), "pinned CA") {
			t.Fatalf("connect with a forged pin: %v, want the pinned-CA refusal", err)
		}
		t.Logf("forged pin: %v", err)
	})

	t.Run("plain client refused", func(t *testing.T) {
		nc, err := nats.Connect(url, nats.Timeout(3*time.Second), nats.NoReconnect())
		if err == nil {
			nc.Close()
			t.Fatal("a plain client connected to the TLS controller")
		}
		// Even a system CA pool (no pin) does not trust it.
		nc, err = nats.Connect(url, nats.Secure(&tls.Config{MinVersion: tls.VersionTLS12}), nats.Timeout(3*time.Second), nats.NoReconnect())
		if err == nil {
			nc.Close()
			t.Fatal("a client with the system roots trusted the private CA")
		}
	})

	t.Run("CLI over the local socket", func(t *testing.T) {
		if info.LocalSocket == "" {
			t.Fatal("no local socket published in TLS mode")
		}
		st := status(t, cli)
		if st.V != messages.Version {
			t.Fatalf("status over the local socket: %+v", st)
		}
	})
}
