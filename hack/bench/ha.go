package main

// The HA bench (-ha, docs/HA.md): fan-out to N simulated agents over a
// 3-controller cluster and over 3 relays into one hub, each beside a bare
// NATS floor of the same shape measured in the same run; failover time
// (kill -9 of the active controller -> a task issued before it completes);
// the controllers' memory per agent in each topology.
//
// The simulated agents run in this process (one NATS connection each, the
// real agent task loop, an in-memory journal): that hides each agent's
// own process costs (a real agent is ~10 MiB RSS, measured by the idle
// figure of the main bench), kernel scheduling of N processes, and real
// network latency; what the controllers, relays and NATS do per agent is
// real.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/pprof"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/freeport"
	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

type haTopology struct {
	Name       string  `json:"name"`
	Agents     int     `json:"agents"`
	Rounds     int     `json:"rounds"`
	P50MS      float64 `json:"p50_ms"`
	P99MS      float64 `json:"p99_ms"`
	FloorP50MS float64 `json:"floor_p50_ms"`
	FloorP99MS float64 `json:"floor_p99_ms"`
	// KiBPerAgent is the RSS growth per agent of each controller process
	// (the active one first; for relays, the hub) and of each relay.
	ControllerKiBPerAgent []float64 `json:"controller_kib_per_agent"`
	RelayKiBPerAgent      []float64 `json:"relay_kib_per_agent,omitempty"`
	// HubTotalKiBPerAgent (relays only) is the hub's whole RSS over the
	// agents behind its relays; DirectKiBPerAgent is the hub's RSS growth
	// per agent while the same agents were connected to it directly (a
	// single controller).
	HubTotalKiBPerAgent float64 `json:"hub_total_kib_per_agent,omitempty"`
	DirectKiBPerAgent   float64 `json:"direct_kib_per_agent,omitempty"`
	// EnrollS is how long enrolling every agent took.
	EnrollS float64 `json:"enroll_s"`
	// Failover (cluster only): kill -9 of the active controller while a
	// 1 s task runs on every agent.
	FailoverNewActiveMS float64 `json:"failover_new_active_ms,omitempty"`
	FailoverTaskDoneMS  float64 `json:"failover_task_done_ms,omitempty"`
	FailoverLost        int     `json:"failover_lost,omitempty"`
}

type haOutput struct {
	Topologies []haTopology `json:"topologies"`
	Machine    string       `json:"machine"`
	Date       string       `json:"date"`
	Hidden     string       `json:"hidden"`
}

type haProc struct {
	cmd              *exec.Cmd
	data, http, nats string
}

func (p *haProc) kill() {
	if p.cmd.ProcessState == nil {
		syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
		p.cmd.Wait()
	}
}

func freePort() int {
	p, err := freeport.Pick(1)
	if err != nil {
		log.Panic(err)
	}
	return p[0]
}

func startProc(bin string, args ...string) *exec.Cmd {
	cmd := exec.Command(filepath.Join(bin, "controller"), args...)
	cmd.Stderr = os.Stderr
	// Pdeathsig: a bench killed (or crashed) must not leave three
	// controllers serving 10,000 agents' worth of state behind it, eating
	// the next run's CPU.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		log.Panic(err)
	}
	return cmd
}

func waitInfo(data string) runinfo.Info {
	for i := 0; i < 600; i++ {
		if info, err := runinfo.Read(data); err == nil {
			return info
		}
		time.Sleep(50 * time.Millisecond)
	}
	log.Panicf("controller in %s did not come up", data)
	return runinfo.Info{}
}

func writeSecret(path string) {
	if err := os.WriteFile(path, []byte("bench-secret-0123456789abcdef0123\n"), 0o600); err != nil {
		log.Panic(err)
	}
}

func isActive(p *haProc) bool {
	_, ok := leaseOf(p)
	return ok
}

// leaseOf asks a controller for its /leasez; ok when it is the active one.
func leaseOf(p *haProc) (li controller.LeaseInfo, ok bool) {
	cl := http.Client{Timeout: 2 * time.Second}
	resp, err := cl.Get("http://" + p.http + "/leasez")
	if err != nil {
		return li, false
	}
	defer resp.Body.Close()
	if json.NewDecoder(resp.Body).Decode(&li) != nil {
		return li, false
	}
	return li, resp.StatusCode == http.StatusOK && li.Active
}

// activeOfOr is activeOf that returns -1 instead of giving up. The peers
// are asked at once, so that a slow answer from one (a peer busy with
// reconnecting agents) does not delay noticing another.
func activeOfOr(ps []*haProc, within time.Duration) int {
	deadline := time.Now().Add(within)
	for time.Now().Before(deadline) {
		found := make(chan int, len(ps))
		for i, p := range ps {
			go func() {
				if p.cmd.ProcessState == nil && isActive(p) {
					found <- i
					return
				}
				found <- -1
			}()
		}
		for range ps {
			if i := <-found; i >= 0 {
				return i
			}
		}
		time.Sleep(20 * time.Millisecond)
	}
	return -1
}

// activeOf is the active controller's index; the bench gives up without one.
func activeOf(ps []*haProc, within time.Duration) int {
	i := activeOfOr(ps, within)
	if i < 0 {
		log.Panic("no active controller")
	}
	return i
}

// enrollBatch bounds the enrollments in flight: the controller keeps at
// most 4,096 pending enrollment connections (maxPendingEnrollments).
const enrollBatch = 2000

// enrollAll enrolls n agents in batches, each online before the next.
func enrollAll(cli *ctlclient.Client, n int, prefix, url, token, work string) []context.CancelFunc {
	var all []context.CancelFunc
	for lo := 0; lo < n; lo += enrollBatch {
		hi := min(lo+enrollBatch, n)
		all = append(all, simAgentsRange(lo, hi, prefix, url, token, work)...)
		haWaitOnline(cli, hi)
		waitSaved(lo, hi, prefix, work)
	}
	return all
}

// waitSaved waits until agents lo..hi have saved their enrollment: the
// controller counts a node online from its enrollment, before the agent
// has read the reply, and an agent stopped then has no state to run with
// (a real one would enroll again with its token and its own key).
func waitSaved(lo, hi int, prefix, work string) {
	deadline := time.Now().Add(5 * time.Minute)
	for i := lo; i < hi; i++ {
		for {
			if _, err := os.Stat(filepath.Join(work, "sim", fmt.Sprintf("%s%05d", prefix, i), "node.json")); err == nil {
				break
			}
			if time.Now().After(deadline) {
				log.Panicf("%s%05d did not save its enrollment in 5 minutes", prefix, i)
			}
			time.Sleep(100 * time.Millisecond)
		}
	}
}

// simAgents starts n in-process agents named PREFIXnnnnn with urls.
func simAgents(n int, prefix, urls, token, work string) []context.CancelFunc {
	return simAgentsRange(0, n, prefix, urls, token, work)
}

func simAgentsRange(lo, hi int, prefix, urls, token, work string) []context.CancelFunc {
	var cancels []context.CancelFunc
	for i := lo; i < hi; i++ {
		name := fmt.Sprintf("%s%05d", prefix, i)
		a, err := agent.New(agent.Config{
			ControllerURL: urls, Token: token, Name: name, Cluster: "sim", Labels: map[string]string{"sim": "true"},
			StateDir: filepath.Join(work, "sim", name), Version: "bench", Tasks: tasks.Builtin(),
			Log: zap.NewNop(), Journal: agent.NewMemJournal(),
		})
		if err != nil {
			log.Panic(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		go a.Run(ctx)
		cancels = append(cancels, cancel)
	}
	return cancels
}

func fanRounds(cli *ctlclient.Client, rounds int) (p50, p99 time.Duration) {
	ctx := context.Background()
	var lat []time.Duration
	for r := 0; r < rounds+2; r++ {
		t := time.Now()
		rep, err := cli.Run(ctx, messages.RunRequest{Target: "sim=true", Kind: "ping", Timeout: "60s"})
		if err != nil {
			log.Panic(err)
		}
		report, err := cli.Wait(ctx, rep.TaskID)
		if err != nil {
			log.Panic(err)
		}
		for _, x := range report.Results {
			if x.Outcome != messages.OutcomeOK {
				log.Panicf("%s: %s %s", x.Node, x.Outcome, x.Reason)
			}
		}
		if r >= 2 {
			lat = append(lat, time.Since(t))
		}
	}
	return pct(lat, 50), pct(lat, 99)
}

// heapDir, when set, receives heap profiles of the controllers (-ha-heap).
var heapDir string

// ctlLogLevel is the child controllers' and relays' --log-level (-ha-log):
// "info" shows each activation's duration beside the bench's figures.
var ctlLogLevel = "error"

// saveHeap writes the heap profile of the controller serving httpAddr
// (started with --pprof) as heapDir/NAME.heap, after a collection.
func saveHeap(httpAddr, name string) {
	if heapDir == "" {
		return
	}
	b := fetch("http://" + httpAddr + "/debug/pprof/heap?gc=1")
	path := filepath.Join(heapDir, name+".heap")
	if err := os.WriteFile(path, b, 0o644); err != nil {
		log.Panic(err)
	}
	log.Printf("heap profile: %s (go tool pprof -top -sample_index=inuse_space %s)", path, path)
}

// saveCPU starts CPU profiles of the controller serving httpAddr and of
// this process (the simulated agents) into heapDir; the returned function
// ends them and writes NAME.cpu and NAME-bench.cpu.
func saveCPU(httpAddr, name string) (stop func()) {
	if heapDir == "" {
		return func() {}
	}
	own := filepath.Join(heapDir, name+"-bench.cpu")
	f, err := os.Create(own)
	if err != nil {
		log.Panic(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Panic(err)
	}
	// The controller's profile runs for a fixed time (the pprof handler's
	// seconds); 60 s covers the rounds at 10,000 agents.
	done := make(chan []byte, 1)
	go func() { done <- fetch("http://" + httpAddr + "/debug/pprof/profile?seconds=60") }()
	return func() {
		pprof.StopCPUProfile()
		f.Close()
		path := filepath.Join(heapDir, name+".cpu")
		if err := os.WriteFile(path, <-done, 0o644); err != nil {
			log.Panic(err)
		}
		log.Printf("CPU profiles: %s (controller), %s (bench)", path, own)
	}
}

// pprofFlag serves /debug/pprof on a controller's --http when profiles are wanted.
func pprofFlag() []string {
	if heapDir == "" {
		return nil
	}
	return []string{"--pprof"}
}

func haMain(bin string, n, rounds int, out, heap, only string) {
	if heapDir = heap; heap != "" {
		if err := os.MkdirAll(heap, 0o755); err != nil {
			log.Panic(err)
		}
	}
	work, err := os.MkdirTemp("", "mgn-bench-ha")
	if err != nil {
		log.Panic(err)
	}
	defer os.RemoveAll(work)
	res := haOutput{Machine: machine(), Date: time.Now().UTC().Format(time.RFC3339),
		Hidden: "simulated agents share this process: per-agent process memory and scheduling, and real network latency, are not in these figures"}
	if only != "relays" {
		res.Topologies = append(res.Topologies, benchCluster(bin, work, n, rounds))
	}
	if only != "cluster" {
		res.Topologies = append(res.Topologies, benchRelays(bin, work, n, rounds))
	}
	fmt.Println()
	for _, t := range res.Topologies {
		fmt.Printf("%-22s %6d agents: p50 %7.1f ms p99 %7.1f ms (floor p50 %6.1f p99 %6.1f)  controller KiB/agent %v relay KiB/agent %v, enrolled in %.0f s\n",
			t.Name, t.Agents, t.P50MS, t.P99MS, t.FloorP50MS, t.FloorP99MS, round1(t.ControllerKiBPerAgent), round1(t.RelayKiBPerAgent), t.EnrollS)
		if t.HubTotalKiBPerAgent > 0 {
			fmt.Printf("%-22s hub: %.1f KiB per agent behind relays (whole RSS / agents; target < 40), %.1f KiB per directly connected agent (RSS growth)\n",
				"", t.HubTotalKiBPerAgent, t.DirectKiBPerAgent)
		}
		if t.FailoverTaskDoneMS > 0 {
			fmt.Printf("%-22s failover: new active after %.0f ms, task issued before the kill done after %.0f ms, %d results lost (targets < 5000 ms, 0)\n",
				"", t.FailoverNewActiveMS, t.FailoverTaskDoneMS, t.FailoverLost)
		}
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(out, append(b, '\n'), 0o644); err != nil {
		log.Panic(err)
	}
	fmt.Printf("wrote %s\n", out)
}

func round1(v []float64) []float64 {
	o := make([]float64, len(v))
	for i, x := range v {
		o[i] = float64(int(x*10)) / 10
	}
	return o
}

func benchCluster(bin, work string, n, rounds int) haTopology {
	secret := filepath.Join(work, "cluster.secret")
	writeSecret(secret)
	var ps []*haProc
	var routes []string
	for i := 0; i < 3; i++ {
		routes = append(routes, fmt.Sprintf("127.0.0.1:%d", freePort()))
	}
	for i := 0; i < 3; i++ {
		var peers []string
		for j, r := range routes {
			if j != i {
				peers = append(peers, "nats://"+r)
			}
		}
		p := &haProc{data: filepath.Join(work, fmt.Sprintf("c%d", i)), http: fmt.Sprintf("127.0.0.1:%d", freePort())}
		args := []string{"serve", "--data-dir", p.data, "--listen", "127.0.0.1:0", "--http", p.http,
			"--sweep-interval", "-1s", "--log-level", ctlLogLevel, "--heartbeat-interval", "1s", "--cluster-name", "bench", "--cluster-listen", routes[i],
			"--peers", strings.Join(peers, ","), "--cluster-secret-file", secret}
		args = append(args, ctlLeaseTTL...)
		p.cmd = startProc(bin, append(args, pprofFlag()...)...)
		ps = append(ps, p)
	}
	defer func() {
		for _, p := range ps {
			p.kill()
		}
	}()
	var urls []string
	for i, p := range ps {
		p.nats = waitInfo(p.data).NATSURL
		urls = append(urls, p.nats)
		urlNames[p.nats] = fmt.Sprintf("c%d", i)
	}
	act := activeOf(ps, 60*time.Second)
	cli := dialAny(ps, -1)
	tok := retryToken(cli)
	base := make([]int64, 3)
	for i, p := range ps {
		base[i] = rssKiB(p.cmd.Process.Pid)
	}
	// Enrollment goes to the active controller (enrolling through a
	// standby works but waits for the peer's notice: docs/HA.md); then
	// the agents run with every peer's URL, spread by the NATS client.
	t0 := time.Now()
	enroll := enrollAll(cli, n, "ha", ps[act].nats, tok, work)
	for _, c := range enroll {
		c()
	}
	for {
		st, err := cli.Status(context.Background())
		if err == nil && st.Summary.Online == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	enrollS := time.Since(t0).Seconds()
	log.Printf("cluster: %d agents enrolled (%.1fs)", n, enrollS)
	var agents []context.CancelFunc
	for i := 0; i < n; i++ {
		agents = append(agents, simAgentAt(fmt.Sprintf("ha%05d", i), strings.Join(urls, ","), work))
	}
	defer func() {
		for _, c := range agents {
			c()
		}
	}()
	haWaitOnline(cli, n)
	log.Printf("cluster: %d agents online over 3 controllers (%.1fs)", n, time.Since(t0).Seconds())
	time.Sleep(2 * time.Second)
	t := haTopology{Name: "3-controller cluster", Agents: n, Rounds: rounds, EnrollS: enrollS}
	saveHeap(ps[act].http, "cluster-active")
	order := []int{act, (act + 1) % 3, (act + 2) % 3}
	for _, i := range order {
		t.ControllerKiBPerAgent = append(t.ControllerKiBPerAgent, float64(rssKiB(ps[i].cmd.Process.Pid)-base[i])/float64(n))
	}
	stopCPU := saveCPU(ps[act].http, "cluster-active")
	p50, p99 := fanRounds(cli, rounds)
	stopCPU()
	t.P50MS, t.P99MS = ms(p50), ms(p99)
	log.Printf("cluster fan-out: p50 %.1f ms p99 %.1f ms", t.P50MS, t.P99MS)

	// Failover: a 1 s task on every agent, then kill -9 of the active one
	// at once (nothing between the two: the agents are still running it).
	for _, i := range order {
		leaseWrites(ps[i].http, fmt.Sprintf("c%d", i))
	}
	cli.Close()
	cli = dialAny(ps, act)
	defer cli.Close()
	ctx := context.Background()
	issued := time.Now()
	rep, err := cli.Run(ctx, messages.RunRequest{Target: "sim=true", Kind: "sleep", Args: json.RawMessage(`{"duration":"1s"}`), Timeout: "120s"})
	if err != nil {
		log.Panic(err)
	}
	before := netstat()
	haTrace.on.Store(haTraceOn)
	stopFailoverProfiles := failoverProfiles(ps, act)
	k := time.Now()
	log.Printf("failover: killing the active controller %.0f ms after the task was issued", ms(k.Sub(issued)))
	ps[act].kill()
	log.Printf("failover: killed the active controller at %s", k.UTC().Format(time.RFC3339Nano))
	next := -1
	for next < 0 || next == act {
		if time.Since(k) > 3*time.Minute {
			break
		}
		next = activeOfOr(ps, 3*time.Minute)
	}
	t.FailoverNewActiveMS = ms(time.Since(k))
	if next >= 0 {
		// The controller says when its activation finished: asking it
		// over HTTP is slower than that while agents reconnect.
		if li, ok := leaseOf(ps[next]); ok && !li.ActiveSince.IsZero() {
			t.FailoverNewActiveMS = ms(li.ActiveSince.Sub(k))
		}
	}
	var lastLog time.Time
	for next >= 0 && next != act {
		// Bounded: a request lost on the way (to the killed peer) is asked
		// again, not waited for; the report waits 1 s for the task itself.
		rctx, rcancel := context.WithTimeout(ctx, 3*time.Second)
		r, err := cli.Report(rctx, rep.TaskID, time.Second)
		rcancel()
		if err != nil && time.Since(lastLog) >= 250*time.Millisecond {
			lastLog = time.Now()
			log.Printf("failover: %.0f ms after the kill, report: %v", ms(time.Since(k)), err)
		}
		if err == nil && !r.Done && time.Since(lastLog) >= 250*time.Millisecond {
			// How the outcomes arrive after the failover: the tail shows
			// which agents the new active's resend missed.
			lastLog = time.Now()
			settled := 0
			for _, x := range r.Results {
				if x.Outcome != "" {
					settled++
				}
			}
			log.Printf("failover: %.0f ms after the kill, %d of %d outcomes in", ms(time.Since(k)), settled, len(r.Results))
		}
		if err == nil && r.Done {
			t.FailoverTaskDoneMS = ms(time.Since(k))
			for _, x := range r.Results {
				if x.Outcome != messages.OutcomeOK {
					if t.FailoverLost < 10 {
						log.Printf("failover: %s %s %s", x.Node, x.Outcome, x.Reason)
					}
					t.FailoverLost++
				}
			}
			break
		}
		if time.Since(k) > 3*time.Minute {
			log.Panic("the task issued before the failover did not finish in 3 minutes")
		}
		time.Sleep(20 * time.Millisecond)
	}
	if next < 0 || next == act {
		t.FailoverNewActiveMS, t.FailoverLost = -1, -1
		log.Printf("failover: NO new active controller within 3 minutes of the kill")
	}
	log.Printf("failover: new active after %.0f ms, task done after %.0f ms, %d not ok", t.FailoverNewActiveMS, t.FailoverTaskDoneMS, t.FailoverLost)
	stopFailoverProfiles()
	if haTraceOn {
		haTrace.report(k, 5, before)
	}
	log.Printf("failover: killed c%d, c%d active", act, next)
	for i := range ps {
		if i != act {
			leaseWrites(ps[i].http, fmt.Sprintf("c%d (after the failover)", i))
		}
	}
	// The floor's n connections replace the agents' (one process has a
	// bounded number of file descriptors).
	for _, c := range agents {
		c()
	}
	agents = nil
	time.Sleep(2 * time.Second)
	fp50, fp99 := floorCluster(n, rounds)
	t.FloorP50MS, t.FloorP99MS = ms(fp50), ms(fp99)
	log.Printf("cluster floor: p50 %.1f ms p99 %.1f ms", t.FloorP50MS, t.FloorP99MS)
	return t
}

func dialAny(ps []*haProc, skip int) *ctlclient.Client {
	for i, p := range ps {
		if i == skip || p.cmd.ProcessState != nil {
			continue
		}
		if c, err := ctlclient.Dial(p.data); err == nil {
			return c
		}
	}
	log.Panic("no controller to dial")
	return nil
}

func retryToken(cli *ctlclient.Client) string {
	for i := 0; i < 100; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Second)
		rep, err := cli.TokenCreate(ctx, "2h", true, messages.TokenScope{})
		cancel()
		if err == nil {
			return rep.Token
		}
		time.Sleep(200 * time.Millisecond)
	}
	log.Panic("no token")
	return ""
}

func benchRelays(bin, work string, n, rounds int) haTopology {
	secret := filepath.Join(work, "relay.secret")
	writeSecret(secret)
	leaf := fmt.Sprintf("127.0.0.1:%d", freePort())
	hub := &haProc{data: filepath.Join(work, "hub"), http: fmt.Sprintf("127.0.0.1:%d", freePort())}
	hubArgs := []string{"serve", "--data-dir", hub.data, "--listen", "127.0.0.1:0", "--http", hub.http,
		"--sweep-interval", "-1s", "--log-level", ctlLogLevel, "--leaf-listen", leaf, "--relay-secret-file", secret,
		"--heartbeat-interval", "1s"}
	hub.cmd = startProc(bin, append(hubArgs, pprofFlag()...)...)
	defer hub.kill()
	hub.nats = waitInfo(hub.data).NATSURL
	cli, err := ctlclient.Dial(hub.data)
	if err != nil {
		log.Panic(err)
	}
	defer cli.Close()
	tok := retryToken(cli)
	var relays []*haProc
	var relayURLs []string
	for i := 0; i < 3; i++ {
		listen := fmt.Sprintf("127.0.0.1:%d", freePort())
		r := &haProc{nats: "nats://" + listen}
		r.cmd = startProc(bin, "relay", "--hub", "nats://"+leaf, "--listen", listen, "--relay-secret-file", secret, "--log-level", ctlLogLevel)
		relays = append(relays, r)
		relayURLs = append(relayURLs, r.nats)
	}
	defer func() {
		for _, r := range relays {
			r.kill()
		}
	}()
	// Agents enroll at the hub, then live behind the relays.
	t0 := time.Now()
	base0 := rssKiB(hub.cmd.Process.Pid)
	enroll := enrollAll(cli, n, "rl", hub.nats, tok, work)
	enrollS := time.Since(t0).Seconds()
	// Enrolled agents stay connected to the hub: a single controller with
	// n direct agents.
	time.Sleep(2 * time.Second)
	direct := float64(rssKiB(hub.cmd.Process.Pid)-base0) / float64(n)
	log.Printf("hub: %.1f KiB RSS growth per directly connected agent", direct)
	saveHeap(hub.http, "hub-direct")
	for _, c := range enroll {
		c()
	}
	// Wait until the hub has seen them go (stale), so that "online" below
	// means online through a relay.
	for {
		st, err := cli.Status(context.Background())
		if err == nil && st.Summary.Online == 0 {
			break
		}
		time.Sleep(200 * time.Millisecond)
	}
	log.Printf("relays: %d agents enrolled at the hub (%.1fs)", n, time.Since(t0).Seconds())
	time.Sleep(3 * time.Second)
	baseHub := rssKiB(hub.cmd.Process.Pid)
	baseRelay := make([]int64, 3)
	for i, r := range relays {
		baseRelay[i] = rssKiB(r.cmd.Process.Pid)
	}
	var agents []context.CancelFunc
	for i := 0; i < 3; i++ {
		lo, hi := i*n/3, (i+1)*n/3
		for j := lo; j < hi; j++ {
			agents = append(agents, simAgentAt(fmt.Sprintf("rl%05d", j), relayURLs[i], work))
		}
	}
	defer func() {
		for _, c := range agents {
			c()
		}
	}()
	haWaitOnline(cli, n)
	log.Printf("relays: %d agents online behind 3 relays (%.1fs)", n, time.Since(t0).Seconds())
	time.Sleep(2 * time.Second)
	t := haTopology{Name: "hub + 3 relays", Agents: n, Rounds: rounds, EnrollS: enrollS, DirectKiBPerAgent: direct}
	saveHeap(hub.http, "hub-relays")
	// The hub's growth once the agents moved behind relays: its direct
	// connections are gone, so this can be negative; per agent it is what
	// the hub holds for an agent it reaches through a relay.
	t.ControllerKiBPerAgent = []float64{float64(rssKiB(hub.cmd.Process.Pid)-baseHub) / float64(n)}
	hubTotal := float64(rssKiB(hub.cmd.Process.Pid)) / float64(n)
	for i, r := range relays {
		t.RelayKiBPerAgent = append(t.RelayKiBPerAgent, float64(rssKiB(r.cmd.Process.Pid)-baseRelay[i])/float64(n/3))
	}
	t.HubTotalKiBPerAgent = hubTotal
	log.Printf("hub RSS %.1f KiB per agent in all (agents behind relays)", hubTotal)
	stopCPU := saveCPU(hub.http, "hub-relays")
	p50, p99 := fanRounds(cli, rounds)
	stopCPU()
	t.P50MS, t.P99MS = ms(p50), ms(p99)
	for _, c := range agents {
		c()
	}
	agents = nil
	time.Sleep(2 * time.Second)
	fp50, fp99 := floorLeaf(n, rounds)
	t.FloorP50MS, t.FloorP99MS = ms(fp50), ms(fp99)
	log.Printf("relay fan-out: p50 %.1f ms p99 %.1f ms (floor %.1f / %.1f)", t.P50MS, t.P99MS, t.FloorP50MS, t.FloorP99MS)
	return t
}

func simAgentAt(name, url, work string) context.CancelFunc {
	a, err := agent.New(agent.Config{
		ControllerURL: url, Name: name, Cluster: "sim", Labels: map[string]string{"sim": "true"},
		StateDir: filepath.Join(work, "sim", name), Version: "bench", Tasks: tasks.Builtin(),
		Log: haTrace.logger(name), Journal: agent.NewMemJournal(),
	})
	if err != nil {
		log.Panic(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	go a.Run(ctx)
	return cancel
}

// The floor's NATS servers run in a child process (this binary with
// -floor-servers): n subscribers over loopback cost 2n file descriptors
// when both ends are in one process, and 10,000 agents hit the limit.

// floorCluster is the floor over a plain 3-server NATS cluster:
// subscribers spread over the three, the publisher on the first.
func floorCluster(n, rounds int) (p50, p99 time.Duration) {
	pub, subs, stop := floorChild("cluster")
	defer stop()
	return floorOver(n, rounds, func(i int) string { return subs[i%len(subs)] }, pub)
}

// floorLeaf is the floor over a plain hub with three leaf servers: the
// subscribers behind the leaves, the publisher on the hub.
func floorLeaf(n, rounds int) (p50, p99 time.Duration) {
	pub, subs, stop := floorChild("leaf")
	defer stop()
	return floorOver(n, rounds, func(i int) string { return subs[i%len(subs)] }, pub)
}

type floorURLs struct {
	Pub  string   `json:"pub"`
	Subs []string `json:"subs"`
}

// floorChild starts `THIS -floor-servers KIND` and reads its URLs; stop
// ends it.
func floorChild(kind string) (pub string, subs []string, stop func()) {
	self, err := os.Executable()
	if err != nil {
		log.Panic(err)
	}
	cmd := exec.Command(self, "-floor-servers", kind)
	cmd.Stderr = os.Stderr
	in, err := cmd.StdinPipe()
	if err != nil {
		log.Panic(err)
	}
	out, err := cmd.StdoutPipe()
	if err != nil {
		log.Panic(err)
	}
	if err := cmd.Start(); err != nil {
		log.Panic(err)
	}
	var u floorURLs
	if err := json.NewDecoder(out).Decode(&u); err != nil {
		cmd.Process.Kill()
		cmd.Wait()
		log.Panicf("floor servers: %v", err)
	}
	return u.Pub, u.Subs, func() { in.Close(); cmd.Wait() }
}

// floorServersMain is the child: it starts the floor's servers, prints
// their URLs and serves until its stdin closes.
func floorServersMain(kind string) {
	var u floorURLs
	var stop func()
	switch kind {
	case "cluster":
		u, stop = floorClusterServers()
	case "leaf":
		u, stop = floorLeafServers()
	default:
		log.Fatalf("-floor-servers %q: cluster or leaf", kind)
	}
	defer stop()
	json.NewEncoder(os.Stdout).Encode(u)
	io.Copy(io.Discard, os.Stdin)
}

func floorClusterServers() (floorURLs, func()) {
	var servers []*server.Server
	var routes []string
	for i := 0; i < 3; i++ {
		routes = append(routes, fmt.Sprintf("127.0.0.1:%d", freePort()))
	}
	for i := 0; i < 3; i++ {
		o := &server.Options{ServerName: fmt.Sprintf("floor%d", i), Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true, MaxPending: 64 << 20}
		o.Cluster.Name, o.Cluster.Host = "floor", "127.0.0.1"
		fmt.Sscanf(routes[i][strings.LastIndexByte(routes[i], ':')+1:], "%d", &o.Cluster.Port)
		for j, r := range routes {
			if j != i {
				o.Routes = append(o.Routes, server.RoutesFromStr("nats://"+r)...)
			}
		}
		servers = append(servers, startServer(o))
	}
	for _, s := range servers {
		for s.NumRoutes() < 2 {
			time.Sleep(20 * time.Millisecond)
		}
	}
	u := floorURLs{Pub: servers[0].ClientURL()}
	for _, s := range servers {
		u.Subs = append(u.Subs, s.ClientURL())
	}
	return u, func() {
		for _, s := range servers {
			s.Shutdown()
		}
	}
}

func floorLeafServers() (floorURLs, func()) {
	leafPort := freePort()
	hub := startServer(&server.Options{ServerName: "floorhub", Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true,
		MaxPending: 64 << 20, LeafNode: server.LeafNodeOpts{Host: "127.0.0.1", Port: leafPort}})
	var leaves []*server.Server
	for i := 0; i < 3; i++ {
		remote := []*url.URL{{Scheme: "nats", Host: fmt.Sprintf("127.0.0.1:%d", leafPort)}}
		leaves = append(leaves, startServer(&server.Options{ServerName: fmt.Sprintf("floorleaf%d", i), Host: "127.0.0.1", Port: server.RANDOM_PORT,
			NoSigs: true, NoLog: true, MaxPending: 64 << 20, LeafNode: server.LeafNodeOpts{Remotes: []*server.RemoteLeafOpts{{URLs: remote}}}}))
	}
	for hub.NumLeafNodes() < 3 {
		time.Sleep(20 * time.Millisecond)
	}
	u := floorURLs{Pub: hub.ClientURL()}
	for _, s := range leaves {
		u.Subs = append(u.Subs, s.ClientURL())
	}
	return u, func() {
		for _, s := range leaves {
			s.Shutdown()
		}
		hub.Shutdown()
	}
}

func startServer(o *server.Options) *server.Server {
	s, err := server.NewServer(o)
	if err != nil {
		log.Panic(err)
	}
	go s.Start()
	if !s.ReadyForConnections(10 * time.Second) {
		log.Panic("floor server")
	}
	return s
}

// floorOver: one publisher (on pubURL) sends a request to each of n plain
// subscribers (subscriber i on subURL(i)) and waits for all n replies.
func floorOver(n, rounds int, subURL func(int) string, pubURL string) (p50, p99 time.Duration) {
	var conns []*nats.Conn
	for i := 0; i < n; i++ {
		nc, err := nats.Connect(subURL(i))
		if err != nil {
			log.Panic(err)
		}
		nc.Subscribe(fmt.Sprintf("floor.%d", i), func(m *nats.Msg) { m.Respond([]byte(`{"ok":true}`)) })
		nc.Flush()
		conns = append(conns, nc)
	}
	defer func() {
		for _, c := range conns {
			c.Close()
		}
	}()
	pub, err := nats.Connect(pubURL)
	if err != nil {
		log.Panic(err)
	}
	defer pub.Close()
	inbox := nats.NewInbox()
	got := make(chan struct{}, n)
	sub, _ := pub.Subscribe(inbox+".*", func(*nats.Msg) { got <- struct{}{} })
	sub.SetPendingLimits(-1, -1)
	pub.Flush()
	time.Sleep(time.Second) // interest travels over routes and leaf links
	var lat []time.Duration
	var mu sync.Mutex
	for r := 0; r < rounds+2; r++ {
		t := time.Now()
		for i := 0; i < n; i++ {
			pub.PublishRequest(fmt.Sprintf("floor.%d", i), fmt.Sprintf("%s.%d", inbox, i), []byte(`{"v":1}`))
		}
		timeout := time.After(30 * time.Second)
		for i := 0; i < n; i++ {
			select {
			case <-got:
			case <-timeout:
				log.Panicf("floor: %d of %d replies in 30 s", i, n)
			}
		}
		if r >= 2 {
			mu.Lock()
			lat = append(lat, time.Since(t))
			mu.Unlock()
		}
	}
	return pct(lat, 50), pct(lat, 99)
}

// haWaitOnline is waitOnline with room for a loaded machine: 10,000
// agents enrolling at once on 2 shared cores can take minutes.
func haWaitOnline(cli *ctlclient.Client, n int) {
	deadline := time.Now().Add(20 * time.Minute)
	last := time.Now()
	for time.Now().Before(deadline) {
		st, err := cli.Status(context.Background())
		if err == nil && st.Summary.Online >= n {
			return
		}
		if time.Since(last) > 30*time.Second && err == nil {
			log.Printf("%d of %d agents online", st.Summary.Online, n)
			last = time.Now()
		}
		time.Sleep(500 * time.Millisecond)
	}
	log.Panicf("fewer than %d agents online after 20 minutes", n)
}
