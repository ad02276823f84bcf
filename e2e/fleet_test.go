package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/messages"
)

type runOut struct {
	TaskID  string `json:"task_id"`
	Results []struct {
		Node       string `json:"node"`
		Outcome    string `json:"outcome"`
		Reason     string `json:"reason"`
		DurationMS int64  `json:"duration_ms"`
	} `json:"results"`
}

func TestCLIContract(t *testing.T) {
	w := newWorld(t)
	tok := w.token()
	w.agent("n1", "a", tok)
	w.agent("n2", "a", tok)
	w.agent("n3", "b", tok)
	poll.Until(t, 20*time.Second, "3 online", func() bool { return w.status().Summary["online"] == 3 })

	out, code := cli(t, "run", "--data-dir", w.data, "--target", "all", "ping", "--json")
	var r runOut
	if err := json.Unmarshal([]byte(out), &r); err != nil || code != 0 || len(r.Results) != 3 || r.TaskID == "" {
		t.Fatalf("run --json: exit %d, %s", code, out)
	}
	out, code = cli(t, "status", "--data-dir", w.data)
	if code != 0 || !strings.Contains(out, "CLUSTER a") || !strings.Contains(out, "CLUSTER b") || !strings.Contains(out, "ago") {
		t.Fatalf("status table: exit %d\n%s", code, out)
	}
	// An unknown task kind is a failure of the run: exit 1.
	if _, code := cli(t, "run", "--data-dir", w.data, "--target", "n1", "nope"); code != 1 {
		t.Fatalf("failed run: exit %d, want 1", code)
	}
	// Usage and connection errors: exit 2.
	for _, args := range [][]string{
		{"run", "--data-dir", w.data, "ping"},                           // no --target
		{"run", "--data-dir", w.data, "--target", "cluster=zz", "ping"}, // matches nothing
		{"status", "--data-dir", t.TempDir()},                           // no controller there
		{"token", "create", "--data-dir", w.data, "--ttl", "never"},     // bad flag value
		{"nodes", "remove", "ghost", "--data-dir", w.data},              // unknown node
		{"status", "--data-dir", w.data, "--bogus-flag"},                // unknown flag
	} {
		if _, code := cli(t, args...); code != 2 {
			t.Errorf("controller %v: exit %d, want 2", args, code)
		}
	}
}

// kill -9 of the controller while a task runs: agents finish, keep their
// results, reconnect to the restarted controller, and nothing is lost.
func TestControllerKilledMidTask(t *testing.T) {
	w := newWorld(t)
	tok := w.token()
	w.agent("n1", "a", tok)
	w.agent("n2", "b", tok)
	poll.Until(t, 20*time.Second, "2 online", func() bool { return w.status().Summary["online"] == 2 })

	c, err := ctlclient.Dial(w.data)
	if err != nil {
		t.Fatal(err)
	}
	run, err := c.Run(t.Context(), messages.RunRequest{Target: "all", Kind: "sleep", Args: json.RawMessage(`{"duration":"1s"}`), Timeout: "60s"})
	c.Close()
	if err != nil {
		t.Fatal(err)
	}
	w.ctl.kill()
	time.Sleep(1500 * time.Millisecond) // the sleep tasks finish while the controller is down (a duration, not a condition)
	w.startController()

	c, err = ctlclient.Dial(w.data)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	rep, err := c.Wait(t.Context(), run.TaskID)
	if err != nil {
		t.Fatalf("wait after restart: %v", err)
	}
	for _, r := range rep.Results {
		if r.Outcome != messages.OutcomeOK {
			t.Errorf("%s: %s %s: a result was lost across the restart", r.Node, r.Outcome, r.Reason)
		}
	}
	poll.Until(t, 20*time.Second, "agents back online", func() bool { return w.status().Summary["online"] == 2 })

	// kill -9 the moment a task is done: its results may be in memory
	// only, not yet stored. The restarted controller still reports them
	// (from the store, or sent again by the agents, which keep each result
	// until it is stored).
	run, err = c.Run(t.Context(), messages.RunRequest{Target: "all", Kind: "ping"})
	if err != nil {
		t.Fatal(err)
	}
	if rep, err := c.Wait(t.Context(), run.TaskID); err != nil || !rep.Done {
		t.Fatalf("ping: %+v %v", rep, err)
	}
	w.ctl.kill()
	w.startController()
	c2, err := ctlclient.Dial(w.data)
	if err != nil {
		t.Fatal(err)
	}
	defer c2.Close()
	rep, err = c2.Wait(t.Context(), run.TaskID)
	if err != nil || !rep.Done {
		t.Fatalf("wait after the second restart: %+v %v", rep, err)
	}
	for _, r := range rep.Results {
		if r.Outcome != messages.OutcomeOK {
			t.Errorf("%s: %s %s: a result was lost when the controller died right after the task", r.Node, r.Outcome, r.Reason)
		}
	}
}

// kill -9 of an agent: its node goes stale, then offline; a restarted agent
// comes back with its stored identity and no token.
func TestAgentKilled(t *testing.T) {
	w := newWorld(t)
	tok := w.token()
	a := w.agent("n1", "a", tok)
	poll.Until(t, 20*time.Second, "online", func() bool { return w.state("n1") == messages.StateOnline })
	a.kill()
	poll.Until(t, 10*time.Second, "stale", func() bool { return w.state("n1") == messages.StateStale })
	poll.Until(t, 10*time.Second, "offline", func() bool { return w.state("n1") == messages.StateOffline })
	if _, code := cli(t, "status", "--data-dir", w.data); code != 1 {
		t.Errorf("status with an offline node: exit %d, want 1", code)
	}
	w.agent("n1", "a", "")
	poll.Until(t, 20*time.Second, "online again", func() bool { return w.state("n1") == messages.StateOnline })
}

// A join token is all an agent needs: it dials the URLs the token carries
// (no --controller), and after a restart without the token the URLs it
// enrolled with.
func TestAgentDialsTheTokensURLs(t *testing.T) {
	w := newWorld(t)
	tok := w.token()
	if jt, err := messages.ParseJoinToken(tok); err != nil || len(jt.URLs) != 1 || jt.URLs[0] != w.url {
		t.Fatalf("token URLs %v (%v), want [%s]", jt.URLs, err, w.url)
	}
	file := filepath.Join(w.dir, "n1.token")
	if err := os.WriteFile(file, []byte(tok+"\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	state := filepath.Join(w.dir, "n1")
	a := start(t, "agent", "run", "--name", "n1", "--cluster", "a", "--state-dir", state, "--token-file", file)
	poll.Until(t, 20*time.Second, "online, having dialled the token's URL", func() bool { return w.state("n1") == messages.StateOnline })
	a.kill()
	poll.Until(t, 10*time.Second, "stale", func() bool { return w.state("n1") != messages.StateOnline })
	start(t, "agent", "run", "--name", "n1", "--cluster", "a", "--state-dir", state)
	poll.Until(t, 20*time.Second, "online again without the token", func() bool { return w.state("n1") == messages.StateOnline })
}

// kill -9 of an agent mid-task: the redelivered task is not run twice.
func TestAgentKilledMidTaskDoesNotRerun(t *testing.T) {
	w := newWorld(t)
	tok := w.token()
	a := w.agent("n1", "a", tok)
	poll.Until(t, 20*time.Second, "online", func() bool { return w.state("n1") == messages.StateOnline })
	c, err := ctlclient.Dial(w.data)
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	run, err := c.Run(t.Context(), messages.RunRequest{Target: "n1", Kind: "sleep", Args: json.RawMessage(`{"duration":"3s"}`), Timeout: "60s"})
	if err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 10*time.Second, "task running", func() bool {
		st, _ := c.Status(t.Context())
		return len(st.Nodes) == 1 && len(st.Nodes[0].Running) == 1
	})
	a.kill()
	w.agent("n1", "a", "")
	rep, err := c.Wait(t.Context(), run.TaskID)
	if err != nil {
		t.Fatal(err)
	}
	if r := rep.Results[0]; r.Outcome != messages.OutcomeUnknown || r.Reason != messages.ReasonOffline || !strings.Contains(string(r.Output), "not run twice") {
		t.Fatalf("interrupted task: %+v %s", r, r.Output)
	}
}

// verify --watch verifies again and again until interrupted; report --last
// shows the newest report.
func TestVerifyWatchAndReport(t *testing.T) {
	w := newWorld(t)
	tok := w.token()
	w.agent("n1", "a", tok)
	poll.Until(t, 20*time.Second, "online", func() bool { return w.state("n1") == messages.StateOnline })
	var out syncBuffer
	cmd := exec.Command(filepath.Join(binDir, "controller"), "verify", "--data-dir", w.data, "--watch", "--every", "200ms", "--layer", "host")
	cmd.Stdout = &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	poll.Until(t, 30*time.Second, "two sweeps", func() bool { return strings.Count(out.String(), "Verification ") >= 2 })
	cmd.Process.Signal(os.Interrupt)
	if err := cmd.Wait(); err != nil {
		t.Fatalf("verify --watch after an interrupt: %v\n%s", err, out.String())
	}
	rep, code := cli(t, "report", "--last", "--data-dir", w.data, "--json")
	var r struct {
		OverallStatus string `json:"overall_status"`
		Layers        []struct{ Name string }
	}
	if err := json.Unmarshal([]byte(rep), &r); err != nil || r.OverallStatus == "" || len(r.Layers) != 1 || r.Layers[0].Name != "host" {
		t.Fatalf("report --last: exit %d %s", code, rep)
	}
}

// syncBuffer is a bytes.Buffer a process writes while the test reads it.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// Bytes returns a copy of what was written so far.
func (s *syncBuffer) Bytes() []byte {
	s.mu.Lock()
	defer s.mu.Unlock()
	return bytes.Clone(s.b.Bytes())
}

// controller backup and restore through the real binary: the backup of a
// running controller, a controller started on the restored data dir with
// the same fleet, and the agent back with its own key.
func TestBackupRestoreCLI(t *testing.T) {
	w := newWorld(t)
	a := w.agent("n1", "a", w.token())
	poll.Until(t, 20*time.Second, "online", func() bool { return w.state("n1") == messages.StateOnline })
	file := filepath.Join(w.dir, "fleet.backup")
	if out, code := cli(t, "backup", "--data-dir", w.data, "--out", file); code != 0 || !strings.Contains(out, "records") {
		t.Fatalf("backup: exit %d: %s", code, out)
	}
	if fi, err := os.Stat(file); err != nil || fi.Mode().Perm() != 0o600 {
		t.Fatalf("backup file: %v %v", fi, err)
	}
	a.kill()
	w.ctl.kill()
	restored := filepath.Join(w.dir, "restored")
	if out, code := cli(t, "restore", "--in", file, "--data-dir", restored); code != 0 || !strings.Contains(out, "controller serve --data-dir") {
		t.Fatalf("restore: exit %d: %s", code, out)
	}
	if _, code := cli(t, "restore", "--in", file, "--data-dir", restored); code != 2 {
		t.Fatalf("restore over a restored data dir: exit %d, want 2", code)
	}
	w.data = restored
	w.startController()
	w.agent("n1", "a", "") // its state dir still holds its key
	poll.Until(t, 20*time.Second, "n1 online on the restored controller", func() bool { return w.state("n1") == messages.StateOnline })
}
