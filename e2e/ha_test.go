package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/freeport"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/messages"
)

// Failover of a 3-controller cluster with real processes (docs/HA.md):
// kill -9 of the active controller in the middle of a fan-out and of a
// verification, kill -9 of a standby, SIGSTOP of the active one. Each
// asserts correctness (one active controller, every task finishes with
// every node's real outcome, agents back online); the times are printed
// (HA-FIGURE lines), never asserted: make bench measures them.

type haPeer struct {
	data, listen, route, http string
	proc                      *proc
}

type haWorld struct {
	t      *testing.T
	dir    string
	secret string
	peers  []*haPeer
	agents []string
}

func haFreePorts(t *testing.T, n int) []int { return freeport.Get(t, n) }

func newHAWorld(t *testing.T, agents int) *haWorld {
	t.Helper()
	w := &haWorld{t: t, dir: t.TempDir()}
	w.secret = filepath.Join(w.dir, "cluster.secret")
	if err := os.WriteFile(w.secret, []byte("e2e-cluster-secret-0123456789abcdef\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	ports := haFreePorts(t, 9)
	for i := range 3 {
		w.peers = append(w.peers, &haPeer{
			data:   filepath.Join(w.dir, fmt.Sprintf("c%d", i)),
			listen: fmt.Sprintf("127.0.0.1:%d", ports[i]),
			route:  fmt.Sprintf("127.0.0.1:%d", ports[3+i]),
			http:   fmt.Sprintf("127.0.0.1:%d", ports[6+i]),
		})
	}
	for i := range 3 {
		w.start(i)
	}
	w.active(60 * time.Second)
	tok := w.token()
	var urls []string
	for _, p := range w.peers {
		urls = append(urls, "nats://"+p.listen)
	}
	for i := range agents {
		name := fmt.Sprintf("n%d", i+1)
		file := filepath.Join(w.dir, name+".token")
		if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
		start(t, "agent", "run", "--controller", strings.Join(urls, ","), "--name", name, "--cluster", "a",
			"--state-dir", filepath.Join(w.dir, name), "--token-file", file)
		w.agents = append(w.agents, name)
	}
	poll.Until(t, 60*time.Second, "agents online", w.allOnline)
	return w
}

func (w *haWorld) start(i int) {
	w.t.Helper()
	p := w.peers[i]
	os.Remove(filepath.Join(p.data, "controller.json"))
	var peers []string
	for j, q := range w.peers {
		if j != i {
			peers = append(peers, "nats://"+q.route)
		}
	}
	p.proc = start(w.t, "controller", "serve", "--data-dir", p.data, "--listen", p.listen, "--http", p.http,
		"--heartbeat-interval", "200ms", "--sweep-interval", "-1s",
		"--cluster-name", "e2e", "--cluster-listen", p.route, "--peers", strings.Join(peers, ","),
		"--cluster-secret-file", w.secret)
	poll.Until(w.t, 30*time.Second, fmt.Sprintf("controller %d up", i), func() bool {
		_, err := runinfo.Read(p.data)
		return err == nil
	})
}

// leasez asks peer i whether it is active; false when it cannot answer.
func (w *haWorld) leasez(i int) bool {
	cl := http.Client{Timeout: 500 * time.Millisecond}
	resp, err := cl.Get("http://" + w.peers[i].http + "/leasez")
	if err != nil {
		return false
	}
	io.Copy(io.Discard, resp.Body)
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

func (w *haWorld) running(i int) bool {
	p := w.peers[i].proc
	return p != nil && p.cmd.ProcessState == nil
}

// active waits until exactly one running peer is active and returns it.
func (w *haWorld) active(within time.Duration) int {
	w.t.Helper()
	idx := -1
	poll.Until(w.t, within, "exactly one active controller", func() bool {
		n := 0
		for i := range w.peers {
			if w.running(i) && w.leasez(i) {
				n++
				idx = i
			}
		}
		return n == 1
	})
	return idx
}

// client dials a running peer other than skip.
func (w *haWorld) client(skip int) *ctlclient.Client {
	w.t.Helper()
	for i := range w.peers {
		if i == skip || !w.running(i) {
			continue
		}
		if c, err := ctlclient.Dial(w.peers[i].data); err == nil {
			return c
		}
	}
	w.t.Fatal("no controller to dial")
	return nil
}

func (w *haWorld) token() string {
	w.t.Helper()
	c := w.client(-1)
	defer c.Close()
	var tok string
	poll.Until(w.t, 20*time.Second, "token", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		rep, err := c.TokenCreate(ctx, "1h", true, messages.TokenScope{})
		tok = rep.Token
		return err == nil
	})
	return tok
}

func (w *haWorld) allOnline() bool {
	c := w.client(-1)
	defer c.Close()
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	st, err := c.Status(ctx)
	if err != nil {
		return false
	}
	on := 0
	for _, n := range st.Nodes {
		if n.State == messages.StateOnline {
			on++
		}
	}
	return on == len(w.agents)
}

// issue starts a task through a peer other than skip.
func (w *haWorld) issue(skip int, req messages.RunRequest) string {
	w.t.Helper()
	c := w.client(skip)
	defer c.Close()
	var id string
	// During a failover the request may find no active controller yet.
	poll.Until(w.t, 40*time.Second, "run accepted", func() bool {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		defer cancel()
		rr, err := c.Run(ctx, req)
		id = rr.TaskID
		return err == nil
	})
	return id
}

// finished waits for task id to be done and checks every node has the
// outcome it really had (ok), none settled unknown.
func (w *haWorld) finished(id string, within time.Duration) {
	w.t.Helper()
	var rep messages.TaskReport
	poll.Until(w.t, within, "task "+id+" done", func() bool {
		c := w.client(-1)
		defer c.Close()
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		defer cancel()
		var err error
		rep, err = c.Report(ctx, id, time.Second)
		return err == nil && rep.Done
	})
	if len(rep.Results) == 0 || len(rep.Results) > len(w.agents) {
		w.t.Fatalf("task %s: %d results for %d agents", id, len(rep.Results), len(w.agents))
	}
	for _, r := range rep.Results {
		if r.Outcome == messages.OutcomeUnknown {
			w.t.Errorf("task %s: %s settled %s (%s): a result was lost", id, r.Node, r.Outcome, r.Reason)
		}
	}
}

// openTasks lists the open tasks' ids (the replicated open bucket).
func (w *haWorld) openTasks() ([]string, error) {
	c := w.client(-1)
	defer c.Close()
	js, err := jetstream.New(c.Conn())
	if err != nil {
		return nil, err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
	defer cancel()
	kv, err := js.KeyValue(ctx, "mgn_tasks_open")
	if err != nil {
		return nil, err
	}
	keys, err := kv.ListKeys(ctx)
	if err != nil {
		return nil, err
	}
	var ids []string
	for k := range keys.Keys() {
		ids = append(ids, k)
	}
	return ids, nil
}

// failover measures how long after t0 a new controller is active and the
// agents are online again.
func (w *haWorld) failover(what string, t0 time.Time, old int) int {
	w.t.Helper()
	next := w.active(30 * time.Second)
	activeAfter := time.Since(t0)
	if next == old {
		w.t.Fatalf("%s: controller %d is active again though it is down", what, old)
	}
	poll.Until(w.t, 90*time.Second, "agents online after "+what, w.allOnline)
	fmt.Printf("HA-FIGURE %s: new active controller after %v, all %d agents online after %v\n",
		what, activeAfter.Round(time.Millisecond), len(w.agents), time.Since(t0).Round(time.Millisecond))
	return next
}

func TestHAKillActiveMidFanOut(t *testing.T) {
	w := newHAWorld(t, 6)
	act := w.active(10 * time.Second)
	id := w.issue(act, messages.RunRequest{Target: "all", Kind: "sleep", Args: json.RawMessage(`{"duration":"2s"}`), Timeout: "60s"})
	t0 := time.Now()
	w.peers[act].proc.kill()
	next := w.failover("kill -9 active mid fan-out", t0, act)
	w.finished(id, 60*time.Second)
	if os.Getenv("HA_DEBUG") != "" {
		for _, l := range strings.Split(w.peers[next].proc.log.String(), "\n") {
			if strings.Contains(l, "lease") || strings.Contains(l, "active") || strings.Contains(l, "leader") || strings.Contains(l, "JetStream") {
				t.Log(l)
			}
		}
	}

	// The killed controller comes back as a standby; the fleet keeps
	// working through the new active one.
	w.start(act)
	if a := w.active(30 * time.Second); a != next {
		t.Logf("the lease moved again to %d", a)
	}
	w.finished(w.issue(-1, messages.RunRequest{Target: "all", Kind: "ping", Timeout: "30s"}), 60*time.Second)
}

func TestHAKillActiveMidVerification(t *testing.T) {
	w := newHAWorld(t, 4)
	act := w.active(10 * time.Second)
	c := w.client(act)
	defer c.Close()
	go func() {
		// The operator's verify is answered by the active controller,
		// which is killed: the request fails, its tasks must not.
		ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
		defer cancel()
		c.Verify(ctx, messages.VerifyRequest{V: messages.Version})
	}()
	var open []string
	poll.Until(t, 20*time.Second, "verification tasks open", func() bool {
		ids, err := w.openTasks()
		open = ids
		return err == nil && len(ids) > 0
	})
	t0 := time.Now()
	w.peers[act].proc.kill()
	next := w.failover("kill -9 active mid verification", t0, act)
	if d := os.Getenv("HA_DEBUG"); d != "" {
		os.WriteFile(filepath.Join(d, "next.log"), w.peers[next].proc.log.Bytes(), 0o600)
	}
	for _, id := range open {
		w.finished(id, 90*time.Second)
	}
	poll.Until(t, 60*time.Second, "no task left open", func() bool {
		ids, err := w.openTasks()
		return err == nil && len(ids) == 0
	})
}

func TestHAKillStandbyMidFanOut(t *testing.T) {
	w := newHAWorld(t, 6)
	act := w.active(10 * time.Second)
	sb := (act + 1) % 3
	id := w.issue(sb, messages.RunRequest{Target: "all", Kind: "sleep", Args: json.RawMessage(`{"duration":"2s"}`), Timeout: "60s"})
	t0 := time.Now()
	w.peers[sb].proc.kill()
	next := w.active(30 * time.Second)
	poll.Until(t, 90*time.Second, "agents online after the standby's loss", w.allOnline)
	fmt.Printf("HA-FIGURE kill -9 standby mid fan-out: active controller %d (was %d), all agents online after %v\n",
		next, act, time.Since(t0).Round(time.Millisecond))
	w.finished(id, 60*time.Second)
}

// A paused active controller that wakes up after another took the lease
// must not act: it issues, settles and stores nothing, and steps down.
func TestHASIGSTOPActive(t *testing.T) {
	w := newHAWorld(t, 4)
	act := w.active(10 * time.Second)
	pid := w.peers[act].proc.cmd.Process.Pid
	if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
		t.Fatal(err)
	}
	t0 := time.Now()
	stopped := true
	defer func() {
		if stopped {
			syscall.Kill(pid, syscall.SIGCONT)
		}
	}()
	// While it is paused, another controller takes over and works.
	var next int
	poll.Until(t, 90*time.Second, "another controller active", func() bool {
		for i := range w.peers {
			if i != act && w.leasez(i) {
				next = i
				return true
			}
		}
		return false
	})
	fmt.Printf("HA-FIGURE SIGSTOP active: controller %d active after %v\n", next, time.Since(t0).Round(time.Millisecond))
	if d := os.Getenv("HA_DEBUG"); d != "" {
		t.Cleanup(func() {
			for i, p := range w.peers {
				os.WriteFile(filepath.Join(d, fmt.Sprintf("sigstop-c%d.log", i)), p.proc.log.Bytes(), 0o600)
			}
		})
	}
	id := w.issue(act, messages.RunRequest{Target: "all", Kind: "ping", Timeout: "30s"})
	before := w.metrics(next)

	syscall.Kill(pid, syscall.SIGCONT)
	stopped = false
	// The woken controller says at once it is not active, and never two
	// are active: checked on every poll until the task is done.
	if w.leasez(act) {
		t.Fatalf("controller %d woke up and still says it is active", act)
	}
	poll.Until(t, 90*time.Second, "the paused controller back as standby", func() bool {
		m := w.metrics(act)
		return m["mgn_controller_active"] == 0 && m["mgn_controller_active_present"] == 1
	})
	wokeM := w.metrics(act)
	w.finished(id, 60*time.Second)
	if n := w.countActive(); n != 1 {
		t.Fatalf("%d controllers active after the wake-up", n)
	}
	after := w.metrics(act)
	for _, k := range []string{"mgn_tasks_issued_total", "mgn_results_received_total"} {
		if after[k] != wokeM[k] {
			t.Errorf("the woken controller changed %s: %v -> %v", k, wokeM[k], after[k])
		}
	}
	if after["mgn_task_outcomes_total"] != wokeM["mgn_task_outcomes_total"] {
		t.Errorf("the woken controller settled outcomes: %v -> %v", wokeM["mgn_task_outcomes_total"], after["mgn_task_outcomes_total"])
	}
	_ = before
}

func (w *haWorld) countActive() int {
	n := 0
	for i := range w.peers {
		if w.running(i) && w.leasez(i) {
			n++
		}
	}
	return n
}

// metrics reads a peer's counters and gauges by name (summed over labels).
func (w *haWorld) metrics(i int) map[string]float64 {
	m := map[string]float64{}
	cl := http.Client{Timeout: time.Second}
	resp, err := cl.Get("http://" + w.peers[i].http + "/metrics")
	if err != nil {
		return m
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(b), "\n") {
		if line == "" || line[0] == '#' {
			continue
		}
		name, rest, ok := strings.Cut(line, " ")
		if !ok {
			continue
		}
		if j := strings.IndexByte(name, '{'); j >= 0 {
			name = name[:j]
		}
		var v float64
		fmt.Sscan(rest, &v)
		m[name] += v
		if name == "mgn_controller_active" {
			m[name+"_present"] = 1
		}
	}
	return m
}
