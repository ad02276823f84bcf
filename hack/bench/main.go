// Command bench measures the fleet core and writes bench.json (make bench).
//
// Fan-out: a real controller process, and N simulated agents in this
// process, each with its own NATS connection and the real agent task loop
// (internal/agent with an in-memory journal instead of files). A no-op
// task (ping) goes to all of them; we time issue → every outcome in. The
// floor is a bare nats.go request fan-out to N plain subscribers on a plain
// embedded server. Idle: one real agent process, idle for 60 s. This
// process runs with GOGC=400 (-sim-gogc; see main for why); the
// controller with Go's default.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"log"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/pprof"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"

	"github.com/guildnet/metaguildnet/hack/internal/sim"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/messages"
)

type fanout struct {
	Agents                int     `json:"agents"`
	P50MS                 float64 `json:"p50_ms"`
	P99MS                 float64 `json:"p99_ms"`
	FloorP50MS            float64 `json:"floor_p50_ms"`
	FloorP99MS            float64 `json:"floor_p99_ms"`
	ResultsPerS           float64 `json:"results_per_s"`
	ControllerKiBPerAgent float64 `json:"controller_kib_per_agent"`
	Rounds                int     `json:"rounds"`
}

type idle struct {
	RSSMiB     float64 `json:"rss_mib"`
	CPUPercent float64 `json:"cpu_percent"`
	Seconds    float64 `json:"seconds"`
}

type output struct {
	Fanout    []fanout          `json:"fanout"`
	AgentIdle idle              `json:"agent_idle"`
	Verify    *sweep            `json:"verify_sweep,omitempty"`
	Diagnose  *diagScan         `json:"diagnose_scan,omitempty"`
	Setup     *setupFigures     `json:"setup_reapply,omitempty"`
	SetupBare *setupBareFigures `json:"setup_bare,omitempty"`
	Tailnet   any               `json:"tailnet,omitempty"`
	Dashboard any               `json:"dashboard,omitempty"`
	Extra     map[string]any    `json:"extra,omitempty"`
	SimGOGC   int               `json:"sim_gogc"`
	Machine   string            `json:"machine"`
	Date      string            `json:"date"`
}

func main() {
	out := flag.String("out", "bench.json", "where to write the figures")
	sizes := flag.String("sizes", "100,1000,5000", "fleet sizes")
	bin := flag.String("bin", "bin", "directory with the controller and agent binaries")
	idleFor := flag.Duration("idle", 60*time.Second, "how long the real agent idles")
	cpuProfile := flag.String("cpuprofile", "", "write this process's CPU profile (the simulated agents) of the largest fan-out's rounds here")
	roundsFlag := flag.Int("rounds", 0, "measured rounds per fleet size (default 100, 30 from 5,000 agents)")
	trace := flag.Bool("trace", false, "print every round's time")
	simGOGC := flag.Int("sim-gogc", 400, "GOGC of this process (the simulated agents and the floor's subscribers); the controller keeps Go's default")
	allocDir := flag.String("allocprofiles", "", "write allocation profiles of the controller and this process before and after the largest fan-out's rounds to this directory (compare with pprof -diff_base)")
	ctlProfile := flag.String("ctlprofile", "", "write the controller's CPU profile of the largest fan-out here")
	worldAgents := flag.Int("world-agents", 100, "agents for the verification sweep against the test world (0 skips)")
	tailnetJSON := flag.String("tailnet-json", "", "merge this tailnet fan-out result (from hack/tailnetbench) into the output")
	dashboardJSON := flag.String("dashboard-json", "", "merge this dashboard result (from hack/dashbench) into the output")
	rollouts := flag.Bool("rollout", true, "run the rollout benchmarks (hack/bench/rollout.go)")
	rolloutOnly := flag.Bool("rollout-only", false, "run only the rollout benchmarks and print them")
	setupAgents := flag.Int("setup-agents", 100, "simulated nodes for the setup re-apply figure (0 skips)")
	setupOnly := flag.Bool("setup-only", false, "measure only the setup re-apply and print it")
	setupBare := flag.Bool("setup-bare", true, "measure setup of a 3-node cluster of the bare test world from nothing (needs the world's servers and root)")
	setupBareOnly := flag.Bool("setup-bare-only", false, "measure only the setup of the bare cluster and print it")
	haFlag := flag.Bool("ha", false, "run the HA bench instead (3-controller cluster, hub + 3 relays, failover; docs/HA.md)")
	haAgents := flag.Int("ha-agents", 2000, "simulated agents for -ha")
	haRounds := flag.Int("ha-rounds", 20, "measured fan-out rounds per topology for -ha")
	haHeap := flag.String("ha-heap", "", "write heap profiles of the hub (direct agents, then agents behind relays) and of the active cluster peer to this directory (-ha; read with `go tool pprof -top`)")
	haLog := flag.String("ha-log", "error", "the -ha controllers' and relays' --log-level (info shows each activation's duration)")
	haTraceFlag := flag.Bool("ha-trace", false, "record the simulated agents' log during the failover and print the last ones to reconnect (-ha)")
	haLeaseTTL := flag.Duration("ha-lease-ttl", 0, "the cluster controllers' --lease-ttl (-ha; 0 keeps the default)")
	haOnly := flag.String("ha-only", "", "run only this -ha topology: cluster or relays")
	floorServers := flag.String("floor-servers", "", "internal: run the -ha floor's NATS servers (cluster or leaf) in this process, print their URLs, serve until stdin closes")
	flag.Parse()
	log.SetFlags(0)
	if *floorServers != "" {
		floorServersMain(*floorServers)
		return
	}
	if *haFlag {
		debug.SetGCPercent(*simGOGC)
		ctlLogLevel = *haLog
		haTraceOn = *haTraceFlag
		if *haLeaseTTL > 0 {
			ctlLeaseTTL = []string{"--lease-ttl", haLeaseTTL.String()}
		}
		haMain(*bin, *haAgents, *haRounds, *out, *haHeap, *haOnly)
		return
	}
	// The simulated agents share this process, so their heaps are one heap,
	// collected at once: every collection would stall all 1,000 agents
	// together. In a fleet each agent is its own process with a small heap
	// whose collections are short and independent. A higher GOGC here keeps
	// that artefact out of the figures; it applies to the floor's
	// subscribers too, which run here as well.
	debug.SetGCPercent(*simGOGC)

	work, err := os.MkdirTemp("", "mgn-bench")
	if err != nil {
		log.Fatal(err)
	}
	if *setupBareOnly {
		defer os.RemoveAll(work)
		f := setupBareBench(*bin, work)
		b, _ := json.MarshalIndent(f, "", "  ")
		fmt.Println(string(b))
		return
	}
	if *rolloutOnly {
		os.RemoveAll(work)
		rb := runRolloutBench()
		if rb == nil {
			log.Fatal("rollout benchmarks failed")
		}
		log.Print(rb)
		return
	}
	if *setupOnly {
		defer os.RemoveAll(work)
		if _, err := setupBench(work, *setupAgents, 10); err != nil {
			log.Fatal(err)
		}
		return
	}
	defer os.RemoveAll(work)
	data := filepath.Join(work, "controller")
	ctl := exec.Command(filepath.Join(*bin, "controller"), "serve", "--data-dir", data, "--listen", "127.0.0.1:0",
		"--http", "127.0.0.1:0", "--pprof", "--sweep-interval", "-1s", "--log-level", "warn")
	ctl.Stderr = os.Stderr
	ctl.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := ctl.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() { syscall.Kill(-ctl.Process.Pid, syscall.SIGKILL); ctl.Wait() }()
	var info runinfo.Info
	for i := 0; i < 200; i++ {
		if info, err = runinfo.Read(data); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		log.Fatal(err)
	}
	cli, err := ctlclient.Dial(data)
	if err != nil {
		log.Fatal(err)
	}
	ctx := context.Background()
	tok, err := cli.TokenCreate(ctx, "2h", true, messages.TokenScope{})
	if err != nil {
		log.Fatal(err)
	}

	// The real agent idles while the fan-out runs (its CPU time is its own).
	idleRes := make(chan idle, 1)
	go func() { idleRes <- measureIdle(*bin, info.NATSURL, tok.Token, work, *idleFor) }()

	// The base for "RSS per agent" is taken once the controller is warm:
	// the idle agent enrolled and one task went through (streams, buckets
	// and the result store in use). Otherwise the first fleet size pays
	// for one-time start-up, which is not a cost per agent.
	waitOnline(cli, 1)
	if rep, err := cli.Run(ctx, messages.RunRequest{Target: "idle-agent", Kind: "ping", Timeout: "30s"}); err != nil {
		log.Fatal(err)
	} else if _, err := cli.Wait(ctx, rep.TaskID); err != nil {
		log.Fatal(err)
	}
	time.Sleep(2 * time.Second)
	baseRSS := rssKiB(ctl.Process.Pid)
	var res output
	var agents []context.CancelFunc
	for _, s := range strings.Split(*sizes, ",") {
		n, _ := strconv.Atoi(s)
		t0 := time.Now()
		for len(agents) < n {
			agents = append(agents, startSim(info.NATSURL, tok.Token, fmt.Sprintf("sim%05d", len(agents)), work))
		}
		waitOnline(cli, n+1)
		log.Printf("%d simulated agents online (%.1fs to enroll and connect)", n, time.Since(t0).Seconds())
		time.Sleep(2 * time.Second) // let enrollment writes settle before measuring memory
		perAgent := float64(rssKiB(ctl.Process.Pid)-baseRSS) / float64(n)
		// p99 needs samples: with 30 rounds it is simply the slowest one.
		rounds := 100
		if n >= 5000 {
			rounds = 30
		}
		if *roundsFlag > 0 {
			rounds = *roundsFlag
		}
		lat := make([]time.Duration, 0, rounds)
		var prof chan []byte
		if *ctlProfile != "" && n == maxSize(*sizes) {
			prof = make(chan []byte, 1)
			go func() { prof <- fetch(info.HTTPURL + "/debug/pprof/profile?seconds=5") }()
		}
		var simProf *os.File
		if *cpuProfile != "" && n == maxSize(*sizes) {
			if simProf, err = os.Create(*cpuProfile); err != nil {
				log.Fatal(err)
			}
			pprof.StartCPUProfile(simProf)
		}
		if *allocDir != "" && n == maxSize(*sizes) {
			allocProfiles(*allocDir, "before", info.HTTPURL)
		}
		for r := 0; r < rounds+2; r++ {
			t := time.Now()
			rep, err := cli.Run(ctx, messages.RunRequest{Target: "sim=true", Kind: "ping", Timeout: "60s"})
			if err != nil {
				log.Fatal(err)
			}
			report, err := cli.Wait(ctx, rep.TaskID)
			if err != nil {
				log.Fatal(err)
			}
			d := time.Since(t)
			for _, x := range report.Results {
				if x.Outcome != messages.OutcomeOK {
					log.Fatalf("%s: %s %s", x.Node, x.Outcome, x.Reason)
				}
			}
			if *trace {
				log.Printf("%s round %d: %.1f ms", time.Now().Format("15:04:05.000"), r, ms(d))
			}
			if r >= 2 { // two warm-up rounds
				lat = append(lat, d)
			}
		}
		if simProf != nil {
			pprof.StopCPUProfile()
			simProf.Close()
		}
		if *allocDir != "" && n == maxSize(*sizes) {
			allocProfiles(*allocDir, "after", info.HTTPURL)
		}
		if prof != nil {
			os.WriteFile(*ctlProfile, <-prof, 0o644)
		}
		fp50, fp99 := floor(n, rounds)
		p50, p99 := pct(lat, 50), pct(lat, 99)
		f := fanout{Agents: n, P50MS: ms(p50), P99MS: ms(p99), FloorP50MS: ms(fp50), FloorP99MS: ms(fp99),
			ResultsPerS: float64(n) / p50.Seconds(), ControllerKiBPerAgent: perAgent, Rounds: rounds}
		res.Fanout = append(res.Fanout, f)
		log.Printf("fan-out %5d: p50 %7.1f ms  p99 %7.1f ms  floor p50 %6.1f ms p99 %6.1f ms  %8.0f results/s  controller %.1f KiB/agent",
			n, f.P50MS, f.P99MS, f.FloorP50MS, f.FloorP99MS, f.ResultsPerS, f.ControllerKiBPerAgent)
	}
	for _, c := range agents {
		c()
	}
	if *worldAgents > 0 {
		sw, ds, cleanup := worldBench(cli, info.NATSURL, tok.Token, work, *worldAgents, 5)
		res.Verify, res.Diagnose = sw, ds
		cleanup()
		if sw != nil {
			log.Printf("verify sweep, %d agents against the test world: p50 %.0f ms, max %.0f ms (%d checks); diagnose one node: p50 %.0f ms, max %.0f ms",
				sw.Agents, sw.P50MS, sw.MaxMS, sw.Checks, ds.P50MS, ds.MaxMS)
		}
	}
	if *setupAgents > 0 {
		if sf, err := setupBench(work, *setupAgents, 10); err != nil {
			log.Printf("setup re-apply: %v", err)
		} else {
			res.Setup = sf
		}
	}
	if *setupBare {
		res.SetupBare = setupBareBench(*bin, work)
	}
	if *tailnetJSON != "" {
		if b, err := os.ReadFile(*tailnetJSON); err == nil {
			var v any
			if json.Unmarshal(b, &v) == nil {
				res.Tailnet = v
			}
		}
	}
	if *dashboardJSON != "" {
		if b, err := os.ReadFile(*dashboardJSON); err == nil {
			var v any
			if json.Unmarshal(b, &v) == nil {
				res.Dashboard = v
			}
		}
	}
	if *rollouts {
		if rb := runRolloutBench(); rb != nil {
			if res.Extra == nil {
				res.Extra = map[string]any{}
			}
			res.Extra["rollout"] = rb
			log.Print(rb)
		}
	}
	res.AgentIdle = <-idleRes
	res.Machine = machine()
	res.SimGOGC = *simGOGC
	res.Date = time.Now().UTC().Format(time.RFC3339)

	fmt.Println()
	fmt.Printf("%-8s %10s %10s %14s %14s %12s %18s\n", "agents", "p50 ms", "p99 ms", "floor p50 ms", "floor p99 ms", "results/s", "controller KiB/agent")
	for _, f := range res.Fanout {
		fmt.Printf("%-8d %10.1f %10.1f %14.1f %14.1f %12.0f %18.1f\n", f.Agents, f.P50MS, f.P99MS, f.FloorP50MS, f.FloorP99MS, f.ResultsPerS, f.ControllerKiBPerAgent)
	}
	fmt.Printf("\nidle agent (real process, %.0f s): RSS %.1f MiB, CPU %.3f%% of a core\n", res.AgentIdle.Seconds, res.AgentIdle.RSSMiB, res.AgentIdle.CPUPercent)
	if res.Verify != nil {
		fmt.Printf("verification sweep (all layers, %d agents, test world): p50 %.0f ms, max %.0f ms, %d checks (target < 3000 ms)\n",
			res.Verify.Agents, res.Verify.P50MS, res.Verify.MaxMS, res.Verify.Checks)
		fmt.Printf("diagnose one node (verification + collectors + analysis): p50 %.0f ms, max %.0f ms (target < 1000 ms)\n",
			res.Diagnose.P50MS, res.Diagnose.MaxMS)
	}
	if res.Setup != nil {
		fmt.Printf("setup re-apply with nothing to do (%d simulated nodes, every step planned, each layer verified): p50 %.0f ms, max %.0f ms (target < 2000 ms)\n",
			res.Setup.Agents, res.Setup.ReapplyP50MS, res.Setup.ReapplyMaxMS)
	}
	if f := res.SetupBare; f != nil && f.Skipped == "" {
		fmt.Printf("setup of a bare cluster (%d nodes) through the CLI: %.1f s (network %.1f, cluster %.1f, database %.1f, application %.1f s; target < 60 s)\n",
			f.Nodes, f.TotalMS/1000, f.LayersMS["network"]/1000, f.LayersMS["cluster"]/1000, f.LayersMS["database"]/1000, f.LayersMS["application"]/1000)
	} else if f != nil {
		fmt.Printf("setup of a bare cluster: skipped: %s\n", f.Skipped)
	}
	b, _ := json.MarshalIndent(res, "", "  ")
	if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
	fmt.Printf("wrote %s\n", *out)
}

func ms(d time.Duration) float64 { return float64(d.Microseconds()) / 1000 }

func pct(ds []time.Duration, p int) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	i := (len(s)*p + 99) / 100
	return s[min(max(i-1, 0), len(s)-1)]
}

func startSim(url, token, name, work string) context.CancelFunc {
	return sim.Start(url, token, name, "sim", work)
}

func waitOnline(cli *ctlclient.Client, n int) {
	sim.WaitOnline(cli, n, 5*time.Minute, 200*time.Millisecond)
}

// floor: one publisher sends a request to each of n plain subscribers (each
// on its own connection) and waits for all n replies.
func floor(n, rounds int) (p50, p99 time.Duration) {
	ns, err := server.NewServer(&server.Options{Host: "127.0.0.1", Port: server.RANDOM_PORT, NoSigs: true, NoLog: true, MaxPending: 64 << 20})
	if err != nil {
		log.Fatal(err)
	}
	go ns.Start()
	if !ns.ReadyForConnections(10 * time.Second) {
		log.Fatal("floor server")
	}
	defer ns.Shutdown()
	var conns []*nats.Conn
	for i := 0; i < n; i++ {
		nc, err := nats.Connect(ns.ClientURL())
		if err != nil {
			log.Fatal(err)
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
	pub, _ := nats.Connect(ns.ClientURL())
	defer pub.Close()
	inbox := nats.NewInbox()
	got := make(chan struct{}, n)
	sub, _ := pub.Subscribe(inbox+".*", func(*nats.Msg) { got <- struct{}{} })
	sub.SetPendingLimits(-1, -1)
	pub.Flush()
	var lat []time.Duration
	var mu sync.Mutex
	for r := 0; r < rounds+2; r++ {
		t := time.Now()
		for i := 0; i < n; i++ {
			pub.PublishRequest(fmt.Sprintf("floor.%d", i), inbox+"."+strconv.Itoa(i), []byte(`{"v":1}`))
		}
		for i := 0; i < n; i++ {
			<-got
		}
		if r >= 2 {
			mu.Lock()
			lat = append(lat, time.Since(t))
			mu.Unlock()
		}
	}
	return pct(lat, 50), pct(lat, 99)
}

func measureIdle(bin, url, token, work string, d time.Duration) idle {
	cmd := exec.Command(filepath.Join(bin, "agent"), "run", "--controller", url, "--name", "idle-agent",
		"--state-dir", filepath.Join(work, "idle-agent"), "--log-level", "warn")
	cmd.Env = append(os.Environ(), "METAGN_TOKEN="+token)
	cmd.Stderr = os.Stderr
	if err := cmd.Start(); err != nil {
		log.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	time.Sleep(5 * time.Second) // enrollment and start-up are not "idle"
	c0, t0 := cpuTicks(cmd.Process.Pid), time.Now()
	time.Sleep(d)
	c1, el := cpuTicks(cmd.Process.Pid), time.Since(t0)
	const hz = 100 // USER_HZ on Linux
	return idle{RSSMiB: float64(rssKiB(cmd.Process.Pid)) / 1024, CPUPercent: float64(c1-c0) / hz / el.Seconds() * 100, Seconds: el.Seconds()}
}

func rssKiB(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "VmRSS:"); ok {
			v, _ := strconv.ParseInt(strings.Fields(rest)[0], 10, 64)
			return v
		}
	}
	return 0
}

func cpuTicks(pid int) int64 {
	b, _ := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	s := string(b)
	f := strings.Fields(s[strings.LastIndexByte(s, ')')+2:])
	u, _ := strconv.ParseInt(f[11], 10, 64)
	st, _ := strconv.ParseInt(f[12], 10, 64)
	return u + st
}

func machine() string {
	b, _ := os.ReadFile("/proc/cpuinfo")
	model := ""
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "model name"); ok {
			model = strings.TrimSpace(strings.TrimPrefix(strings.TrimSpace(rest), ":"))
			break
		}
	}
	n, _ := os.ReadFile("/proc/sys/kernel/osrelease")
	return fmt.Sprintf("%s, %d cores, linux %s", model, runtime.NumCPU(), strings.TrimSpace(string(n)))
}

func maxSize(sizes string) int {
	m := 0
	for _, s := range strings.Split(sizes, ",") {
		n, _ := strconv.Atoi(s)
		m = max(m, n)
	}
	return m
}

func fetch(url string) []byte {
	resp, err := http.Get(url)
	if err != nil {
		log.Printf("profile: %v", err)
		return nil
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return b
}

// allocProfiles writes DIR/controller-WHEN.prof and DIR/bench-WHEN.prof,
// each after a collection so that it counts everything allocated so far.
func allocProfiles(dir, when, ctlHTTP string) {
	if err := os.WriteFile(filepath.Join(dir, "controller-"+when+".prof"), fetch(ctlHTTP+"/debug/pprof/allocs?gc=1"), 0o644); err != nil {
		log.Fatal(err)
	}
	runtime.GC()
	f, err := os.Create(filepath.Join(dir, "bench-"+when+".prof"))
	if err != nil {
		log.Fatal(err)
	}
	defer f.Close()
	pprof.Lookup("allocs").WriteTo(f, 0)
}
