package main

import (
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime/pprof"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zapcore"
)

// agentTrace records the simulated agents' log entries (debug included)
// while it is on: the failover's tail is a few agents out of thousands,
// and only their own account says why they were late.
type agentTrace struct {
	on atomic.Bool
	mu sync.Mutex
	ev []traceEvent
}

type traceEvent struct {
	at        time.Time
	node, msg string
	err       string
}

var (
	haTrace   agentTrace
	haTraceOn bool // -ha-trace

	ctlLeaseTTL []string // -ha-lease-ttl

	urlNames = map[string]string{} // controller NATS URL -> name, for the trace
)

// logger is the agent's logger: silent unless the trace is on.
func (t *agentTrace) logger(node string) *zap.Logger {
	return zap.New(&traceCore{t: t, node: node})
}

type traceCore struct {
	t    *agentTrace
	node string
	err  string
}

func (c *traceCore) Enabled(zapcore.Level) bool { return c.t.on.Load() }
func (c *traceCore) With(fs []zapcore.Field) zapcore.Core {
	n := *c
	for _, f := range fs {
		if f.Key == "error" {
			if e, ok := f.Interface.(error); ok {
				n.err = e.Error()
			}
		}
	}
	return &n
}
func (c *traceCore) Check(e zapcore.Entry, ce *zapcore.CheckedEntry) *zapcore.CheckedEntry {
	if c.Enabled(e.Level) {
		return ce.AddCore(e, c)
	}
	return ce
}
func (c *traceCore) Write(e zapcore.Entry, fs []zapcore.Field) error {
	ev := traceEvent{at: e.Time, node: c.node, msg: e.Message, err: c.err}
	for _, f := range fs {
		switch {
		case f.Key == "error":
			if x, ok := f.Interface.(error); ok {
				ev.err = x.Error()
			}
		case f.Type == zapcore.StringType:
			ev.msg += " " + f.Key + "=" + f.String
		case f.Type == zapcore.Int64Type:
			ev.msg += " " + f.Key + "=" + strconv.FormatInt(f.Integer, 10)
		}
	}
	c.t.mu.Lock()
	c.t.ev = append(c.t.ev, ev)
	c.t.mu.Unlock()
	return nil
}
func (c *traceCore) Sync() error { return nil }

// report prints, for the last agents to reconnect after k, every entry
// they logged, and the kernel's listen-queue counters since before.
func (t *agentTrace) report(k time.Time, last int, before map[string]int64) {
	t.on.Store(false)
	t.mu.Lock()
	ev := t.ev
	t.ev = nil
	t.mu.Unlock()
	byNode := map[string][]traceEvent{}
	reconnected := map[string]time.Time{}
	failed := map[string]int{}
	for _, e := range ev {
		byNode[e.node] = append(byNode[e.node], e)
		if strings.HasPrefix(e.msg, "reconnected") {
			reconnected[e.node] = e.at
		}
		if strings.HasPrefix(e.msg, "reconnect attempt failed") && !strings.Contains(e.err, "connection refused") {
			failed[e.err]++
		}
	}
	byURL := map[string]map[int]int{}
	for _, e := range ev {
		if strings.HasPrefix(e.msg, "reconnected") {
			u := e.msg[strings.Index(e.msg, "url=")+4:]
			if byURL[u] == nil {
				byURL[u] = map[int]int{}
			}
			byURL[u][int(e.at.Sub(k)/(500*time.Millisecond))]++
		}
	}
	for u, h := range byURL {
		var b strings.Builder
		for i := 0; i < 40; i++ {
			if h[i] > 0 {
				fmt.Fprintf(&b, " %.1fs:%d", float64(i)/2, h[i])
			}
		}
		log.Printf("trace: reconnects to %s (%s) by half second after the kill:%s", u, urlNames[u], b.String())
	}
	nodes := make([]string, 0, len(reconnected))
	for n := range reconnected {
		nodes = append(nodes, n)
	}
	sort.Slice(nodes, func(i, j int) bool { return reconnected[nodes[i]].After(reconnected[nodes[j]]) })
	log.Printf("trace: %d agents reconnected; failed attempts other than refused: %v", len(nodes), failed)
	for i, n := range nodes {
		if i == last {
			break
		}
		var b strings.Builder
		for _, e := range byNode[n] {
			fmt.Fprintf(&b, "\n    %+6.0f ms %s", ms(e.at.Sub(k)), e.msg)
			if e.err != "" {
				fmt.Fprintf(&b, " (%s)", e.err)
			}
		}
		log.Printf("trace: %s reconnected %.0f ms after the kill:%s", n, ms(reconnected[n].Sub(k)), b.String())
	}
	after := netstat()
	for _, key := range []string{"ListenOverflows", "ListenDrops", "SyncookiesSent", "TCPReqQFullDrop", "TCPTimeouts"} {
		log.Printf("trace: kernel %s +%d", key, after[key]-before[key])
	}
}

// netstat reads the TcpExt counters of /proc/net/netstat.
func netstat() map[string]int64 {
	out := map[string]int64{}
	b, err := os.ReadFile("/proc/net/netstat")
	if err != nil {
		return out
	}
	lines := strings.Split(string(b), "\n")
	for i := 0; i+1 < len(lines); i += 2 {
		keys, vals := strings.Fields(lines[i]), strings.Fields(lines[i+1])
		for j := 1; j < len(keys) && j < len(vals); j++ {
			v, _ := strconv.ParseInt(vals[j], 10, 64)
			out[keys[j]] = v
		}
	}
	return out
}

// leaseWrites prints a controller's lease renewals by latency (the
// mgn_lease_write_seconds histogram): how close the renewals come to the
// TTL/3 at which the active controller stops acting.
func leaseWrites(httpAddr, who string) {
	resp := string(fetch("http://" + httpAddr + "/metrics"))
	var b strings.Builder
	for _, line := range strings.Split(resp, "\n") {
		if !strings.HasPrefix(line, `mgn_lease_write_seconds_bucket{`) || !strings.Contains(line, `op="renew"`) {
			continue
		}
		for _, le := range []string{`le="0.025"`, `le="0.1"`, `le="0.25"`, `le="0.5"`, `le="1"`, `le="+Inf"`} {
			if strings.Contains(line, le) {
				f := strings.Fields(line)
				fmt.Fprintf(&b, " %s:%s", strings.Trim(strings.TrimPrefix(le, "le="), `"`), f[len(f)-1])
			}
		}
	}
	log.Printf("lease renewals of %s, cumulative by seconds:%s", who, b.String())
	for _, line := range strings.Split(resp, "\n") {
		if strings.HasPrefix(line, `mgn_messages_refused_total{kind="connect"`) {
			log.Printf("%s refused: %s", who, line)
		}
	}
}

// failoverProfiles profiles the surviving controllers and this process
// (the agents) for the 6 s after the kill (-ha-heap): where the reconnect
// storm goes.
func failoverProfiles(ps []*haProc, killed int) (stop func()) {
	if heapDir == "" {
		return func() {}
	}
	own := filepath.Join(heapDir, "failover-bench.cpu")
	f, err := os.Create(own)
	if err != nil {
		log.Panic(err)
	}
	if err := pprof.StartCPUProfile(f); err != nil {
		log.Panic(err)
	}
	var wg sync.WaitGroup
	start := time.Now()
	// Per survivor: a CPU profile, and goroutine dumps while agents
	// reconnect (a batch of agents let in at the same instant means they
	// waited on one lock).
	for i, p := range ps {
		if i == killed {
			continue
		}
		wg.Add(2)
		go func() {
			defer wg.Done()
			path := filepath.Join(heapDir, fmt.Sprintf("failover-c%d.cpu", i))
			if err := os.WriteFile(path, fetch("http://"+p.http+"/debug/pprof/profile?seconds=6"), 0o644); err != nil {
				log.Print(err)
			}
		}()
		go func() {
			defer wg.Done()
			for _, at := range []time.Duration{1500, 2500, 3500, 4500} {
				time.Sleep(at*time.Millisecond - time.Since(start))
				path := filepath.Join(heapDir, fmt.Sprintf("failover-c%d-%dms.goroutines", i, at))
				if err := os.WriteFile(path, fetch("http://"+p.http+"/debug/pprof/goroutine?debug=1"), 0o644); err != nil {
					log.Print(err)
				}
			}
		}()
	}
	wg.Add(1)
	go func() {
		defer wg.Done()
		for _, at := range []time.Duration{1500, 2500, 3500, 4500} {
			time.Sleep(at*time.Millisecond - time.Since(start))
			f, err := os.Create(filepath.Join(heapDir, fmt.Sprintf("failover-bench-%dms.goroutines", at)))
			if err != nil {
				log.Panic(err)
			}
			pprof.Lookup("goroutine").WriteTo(f, 1)
			f.Close()
		}
	}()
	return func() {
		wg.Wait()
		pprof.StopCPUProfile()
		f.Close()
		log.Printf("failover profiles in %s (failover-c*.cpu, failover-bench.cpu, *.goroutines)", heapDir)
	}
}
