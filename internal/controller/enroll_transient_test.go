package controller_test

import (
	"context"
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest/observer"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

// TestEnrollTransientRefusalIsRetried: an agent enrolls through a standby
// whose notice of the attempt reaches the active controller late (held
// here until the agent has been refused once, as under load). The active
// controller's refusal says "unavailable", the real agent retries with
// backoff and enrolls once the notice is through; it never gives up. A
// permanent refusal (a spent single-use token; a request outside the
// token's scope) still ends the agent's Run at once with ErrEnrollRefused.
func TestEnrollTransientRefusalIsRetried(t *testing.T) {
	h := newHACluster(t)
	act := h.active(30 * time.Second)
	sb := (act + 1) % 3
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	token := func(scope messages.TokenScope) string {
		var rep messages.TokenCreateReply
		poll.Until(t, 10*time.Second, "token", func() bool {
			var err error
			rep, err = h.cli[act].TokenCreate(ctx, "1h", false, scope)
			return err == nil
		})
		return rep.Token
	}

	release := make(chan struct{})
	h.c[sb].HoldPendingNotices(release)
	core, logs := observer.New(zap.InfoLevel)
	start := func(name, url, tok, cluster string, log *zap.Logger) <-chan error {
		return startAgent(t, agent.Config{
			ControllerURL: url, Token: tok, Name: name, Cluster: cluster,
			StateDir: filepath.Join(h.dir, "agents", name), Version: "test", Tasks: tasks.Builtin(), Log: log,
		})
	}
	single := token(messages.TokenScope{})
	done := start("late1", h.urls[sb], single, "", zap.New(core))
	poll.Until(t, 20*time.Second, "a transient refusal seen by the agent", func() bool {
		return logs.FilterMessageSnippet("cannot answer now, retrying").Len() > 0
	})
	for _, e := range logs.FilterMessageSnippet("cannot answer now").All() {
		if err, _ := e.ContextMap()["error"].(string); !strings.Contains(err, messages.CodeUnavailable) {
			t.Fatalf("transient refusal without the unavailable code: %q", err)
		}
	}
	select {
	case err := <-done:
		t.Fatalf("the agent gave up on a transient refusal: %v", err)
	default:
	}
	close(release)
	poll.Until(t, 30*time.Second, "late1 enrolled and online", func() bool { return h.online(act, "late1") })
	t.Logf("late1: %d transient refusals before it enrolled", logs.FilterMessageSnippet("cannot answer now").Len())

	// Permanent: the single-use token is spent (refused at connect)...
	spent := start("late2", h.urls[sb], single, "", zap.NewNop())
	select {
	case err := <-spent:
		if !errors.Is(err, agent.ErrEnrollRefused) {
			t.Fatalf("spent token: want ErrEnrollRefused, got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("spent token: the agent kept retrying")
	}
	// ... and a cluster the token does not allow (refused in the reply).
	scoped := start("late3", h.urls[act], token(messages.TokenScope{Cluster: "a"}), "b", zap.NewNop())
	select {
	case err := <-scoped:
		if !errors.Is(err, agent.ErrEnrollRefused) || !strings.Contains(err.Error(), `cluster "b"`) {
			t.Fatalf("scope: want ErrEnrollRefused naming the cluster, got %v", err)
		}
	case <-time.After(20 * time.Second):
		t.Fatal("scope: the agent kept retrying")
	}
}
