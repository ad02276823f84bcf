package controller

import (
	"bytes"
	"context"
	"encoding/json"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

func TestSetupBackoff(t *testing.T) {
	for attempt, want := range map[int]time.Duration{1: 2 * time.Second, 2: 4 * time.Second, 3: 8 * time.Second, 4: 16 * time.Second, 5: 30 * time.Second, 40: 30 * time.Second} {
		for range 50 {
			d := backoff(2*time.Second, attempt)
			lo := time.Duration(float64(want) * 0.8)
			if d < lo || d > min(time.Duration(float64(want)*1.2), setupMaxBackoff) {
				t.Fatalf("attempt %d: %v, want %v ±20%% (at most 30s)", attempt, d, want)
			}
		}
	}
}

func TestLayerStatusOver(t *testing.T) {
	for _, tc := range []struct {
		per  map[string]string
		want string
	}{
		{map[string]string{"a": layerVerified, "b": layerVerified}, layerVerified},
		{map[string]string{"a": layerVerified, "b": layerRolledBack}, layerRolledBack},
		{map[string]string{"a": layerFailed, "b": layerUnhealthy}, layerFailed},
		{map[string]string{"a": layerVerified, "b": layerRunning}, layerRunning},
		{map[string]string{"a": layerVerified, "b": layerSkipped}, layerVerified},
		{map[string]string{"a": layerSkipped}, layerSkipped},
		{map[string]string{}, layerPending},
	} {
		if got := layerStatusOver(tc.per); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.per, got, tc.want)
		}
	}
}

// A sealed task is sent with its sealed values and resent with them on a
// sync while it is open, but the stored record never has them.
func TestSealedTaskNeverStored(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{DataDir: filepath.Join(t.TempDir(), "c"), Listen: "127.0.0.1:0", SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	sealed := json.RawMessage(`{"talos.machine_config":"SEALED-SECRET-1"}`)
	rep, err := c.disp.issueSealed(ctx, messages.RunRequest{V: 1, Target: "setup:x", Kind: "step", Args: json.RawMessage(`{}`), Timeout: "1m"},
		[]string{"ghost"}, map[string]string{"ghost": messages.StateOnline}, sealed, true)
	if err != nil {
		t.Fatal(err)
	}
	owed, err := c.disp.owedBy(ctx, "ghost")
	if err != nil || len(owed) != 1 || string(owed[0].Sealed) != string(sealed) {
		t.Fatalf("resend on sync: %+v %v", owed, err)
	}
	e, err := c.disp.open.Get(ctx, rep.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if bytes.Contains(e.Value(), []byte("SEALED-SECRET")) || bytes.Contains(e.Value(), []byte(`"sealed"`)) {
		t.Fatalf("stored task record holds the sealed values: %s", e.Value())
	}
	// A result's sealed values go to the issuer, not to the results stream.
	res := messages.Result{V: 1, TaskID: rep.TaskID, Node: "ghost", Outcome: messages.OutcomeOK, Sealed: json.RawMessage(`{"kubeconfig":"SEALED-SECRET-2"}`)}
	c.disp.onResult(&nats.Msg{Subject: messages.ResultSubject("ghost"), Data: messages.MustEncode(&res)})
	if _, err := c.disp.wait(ctx, rep.TaskID); err != nil {
		t.Fatal(err)
	}
	if got := c.disp.takeSealed(rep.TaskID, "ghost"); string(got) != `{"kubeconfig":"SEALED-SECRET-2"}` {
		t.Fatalf("issuer got %s", got)
	}
	if err := c.disp.store.wait(ctx, c.disp.store.last()); err != nil {
		t.Fatal(err)
	}
	stored, err := storedResults(ctx, c.disp.results, rep.TaskID, c.opts.MaxMessageBytes)
	if err != nil || len(stored) != 1 || stored["ghost"].Sealed != nil {
		t.Fatalf("stored result: %+v %v", stored, err)
	}
	c.Close()
	filepath.WalkDir(c.opts.DataDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() {
			if b, _ := os.ReadFile(p); bytes.Contains(b, []byte("SEALED-SECRET")) {
				t.Errorf("a sealed value in %s", p)
			}
		}
		return nil
	})
}

// Sealed outputs are kept only for the keys the step declares and only
// from the node the step was dispatched to: a result from another node
// never reaches the issuer, and an undeclared key is dropped, not written.
func TestKeepSealedDeclaredKeysFromTheDispatchedNode(t *testing.T) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	c, err := Start(ctx, Options{DataDir: filepath.Join(t.TempDir(), "c"), Listen: "127.0.0.1:0", SweepInterval: -1})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rep, err := c.disp.issueSealed(ctx, messages.RunRequest{V: 1, Target: "setup:x", Kind: "step", Args: json.RawMessage(`{}`), Timeout: "1m"},
		[]string{"n1"}, map[string]string{"n1": messages.StateOnline}, nil, true)
	if err != nil {
		t.Fatal(err)
	}
	// n2 was not asked: what it sends for the task is not kept.
	other := messages.Result{V: 1, TaskID: rep.TaskID, Node: "n2", Outcome: messages.OutcomeOK, Sealed: json.RawMessage(`{"kubeconfig":"FROM-N2"}`)}
	c.disp.onResult(&nats.Msg{Subject: messages.ResultSubject("n2"), Data: messages.MustEncode(&other)})
	// n1 claiming to be n2 is n1.
	res := messages.Result{V: 1, TaskID: rep.TaskID, Node: "n2", Outcome: messages.OutcomeOK,
		Sealed: json.RawMessage(`{"kubeconfig":"KC-N1","talosconfig":"TC-N1","planted":"EVIL"}`)}
	c.disp.onResult(&nats.Msg{Subject: messages.ResultSubject("n1"), Data: messages.MustEncode(&res)})
	if _, err := c.disp.wait(ctx, rep.TaskID); err != nil {
		t.Fatal(err)
	}
	if got := c.disp.takeSealed(rep.TaskID, "n2"); len(got) != 0 {
		t.Fatalf("sealed values of a node the task was not sent to: %s", got)
	}
	raw := c.disp.takeSealed(rep.TaskID, "n1")
	if len(raw) == 0 {
		t.Fatal("n1's sealed values lost")
	}
	st := &steps.Step{Name: "kubeconfig_fetch", SealedOutputs: []string{"kubeconfig"}}
	dropped, err := c.setup.keepSealed("alpha", st, "n1", raw)
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(dropped, ",") != "planted,talosconfig" {
		t.Fatalf("dropped %v, want planted,talosconfig", dropped)
	}
	dir := filepath.Join(c.opts.DataDir, "secrets", "alpha")
	ents, _ := os.ReadDir(dir)
	var names []string
	for _, e := range ents {
		names = append(names, e.Name())
	}
	if strings.Join(names, ",") != "kubeconfig" {
		t.Fatalf("secrets dir holds %v, want only kubeconfig", names)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "kubeconfig")); string(b) != "KC-N1" {
		t.Fatalf("kubeconfig %q", b)
	}
	// A step that declares nothing keeps nothing.
	dropped, err = c.setup.keepSealed("alpha", &steps.Step{Name: "headscale_user"}, "n1", json.RawMessage(`{"kubeconfig":"OVERWRITE"}`))
	if err != nil || len(dropped) != 1 {
		t.Fatalf("dropped %v %v", dropped, err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "kubeconfig")); string(b) != "KC-N1" {
		t.Fatalf("kubeconfig overwritten through an undeclaring step: %q", b)
	}
}

// A cluster without a hostapp node verifies its application layer without
// the host app's checks; one with a hostapp node, or require.checks, as
// asked.
func TestLayerChecksWithoutHostApp(t *testing.T) {
	spec := messages.FleetCluster{Name: "beta", Nodes: []messages.FleetNode{{Name: "b1", Role: messages.RoleControlPlane}}}
	got := layerChecks(spec, messages.LayerApplication)
	if len(got) == 0 || slices.ContainsFunc(got, func(c string) bool { return strings.HasPrefix(c, "hostapp_") || c == "proxy_answers" }) ||
		!slices.Contains(got, "operator_available") {
		t.Fatalf("application checks without a host app: %v", got)
	}
	if got := layerChecks(spec, messages.LayerCluster); got != nil {
		t.Fatalf("cluster layer: %v, want all (nil)", got)
	}
	spec.Nodes = append(spec.Nodes, messages.FleetNode{Name: "h", Role: messages.RoleHostApp})
	if got := layerChecks(spec, messages.LayerApplication); got != nil {
		t.Fatalf("with a hostapp node: %v, want all (nil)", got)
	}
	spec.Require.Checks = []string{"operator_available"}
	if got := layerChecks(spec, messages.LayerApplication); !slices.Equal(got, spec.Require.Checks) {
		t.Fatalf("require.checks: %v", got)
	}
}
