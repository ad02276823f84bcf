// Command tailnetbench measures a task fan-out over the tailnet beside the
// same fan-out over loopback TCP (controller and agents on a Headscale
// tailnet, see docs/TAILNET.md), and prints JSON.
//
// It re-executes itself in a loopback-only network namespace (tsnet may
// run nowhere else), starts a real Headscale there, a controller joined
// with tsnet, and N real agents (internal/agent, in-memory journal), each
// with its own tsnet node. A no-op task (ping) goes to all of them; a round
// is issue → every result in. Then the same with a plain controller on
// 127.0.0.1 and N agents over TCP.
//
//	go run ./hack/tailnetbench -agents 50 -rounds 30 -out bench-tailnet.json
//
// Needs root (for the namespace) and the Headscale binary (`make testenv`).
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

// Fanout is one transport's figures.
type Fanout struct {
	Transport string  `json:"transport"` // tailnet or loopback
	Agents    int     `json:"agents"`
	Rounds    int     `json:"rounds"`
	P50MS     float64 `json:"p50_ms"`
	P99MS     float64 `json:"p99_ms"`
	MaxMS     float64 `json:"max_ms"`
	// UpS is how long it took from the first agent start until all were
	// online (tailnet: joining with tsnet, enrolling, connecting).
	UpS float64 `json:"up_s"`
	// Tailnet only: paths the agents reported and their ping RTT.
	Direct   int     `json:"direct,omitempty"`
	DERP     int     `json:"derp,omitempty"`
	RTTP50MS float64 `json:"rtt_p50_ms,omitempty"`
	RTTP99MS float64 `json:"rtt_p99_ms,omitempty"`
	// ProcessRSSMiB is the bench process (controller + all agents and
	// their tsnet nodes) at the end of the rounds.
	ProcessRSSMiB float64 `json:"process_rss_mib"`
}

// Output is what the program prints.
type Output struct {
	Fanout  []Fanout `json:"fanout"`
	Machine string   `json:"machine"`
	Date    string   `json:"date"`
}

func main() {
	agents := flag.Int("agents", 50, "agents (each its own tsnet node)")
	rounds := flag.Int("rounds", 30, "measured fan-out rounds (after 2 warm-up rounds)")
	out := flag.String("out", "", "also write the JSON here")
	parallel := flag.Int("join-parallel", 8, "tsnet nodes joining at once")
	flag.Parse()
	log.SetFlags(0)
	log.SetPrefix("tailnetbench: ")
	testenv.RunInNetNS(func() int {
		if why := testenv.Missing(testenv.NeedHeadscale, testenv.NeedNetNS); why != "" {
			log.Printf("cannot run: %s (run `make testenv`; needs root for the network namespace)", why)
			return 2
		}
		res, err := run(*agents, *rounds, *parallel)
		if err != nil {
			log.Print(err)
			return 1
		}
		b, _ := json.MarshalIndent(res, "", "  ")
		fmt.Println(string(b))
		if *out != "" {
			if err := os.WriteFile(*out, append(b, '\n'), 0o644); err != nil {
				log.Print(err)
				return 1
			}
		}
		return 0
	})
}

func run(n, rounds, parallel int) (*Output, error) {
	work, err := os.MkdirTemp("", "tnb")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	testenv.SetTSNetEnv(filepath.Join(work, "tslogs"))
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Minute)
	defer cancel()
	hs, err := testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{Dir: filepath.Join(work, "hs")})
	if err != nil {
		return nil, err
	}
	defer hs.Close()
	u, err := hs.CreateUser(ctx, "bench")
	if err != nil {
		return nil, err
	}
	key, err := hs.CreatePreAuthKey(ctx, u.ID, true, false, 2*time.Hour)
	if err != nil {
		return nil, err
	}
	res := &Output{Machine: fmt.Sprintf("%s/%s, %d CPUs", runtime.GOOS, runtime.GOARCH, runtime.NumCPU()),
		Date: time.Now().UTC().Format(time.RFC3339)}

	// Over the tailnet.
	tn, err := fanout(ctx, work, "tailnet", n, rounds, parallel, func(o *controller.Options) {
		o.Tailnet = controller.TailnetOptions{Enabled: true, AuthKey: key, ControlURL: hs.URL()}
	}, func(c *agent.Config) {
		c.ControllerURL = "nats://guildnet-controller:4222"
		c.Tailnet = agent.TailnetConfig{Mode: agent.TailnetTSNet, AuthKey: key, ControlURL: hs.URL(), ProbeEvery: 2 * time.Second}
	})
	if err != nil {
		return nil, fmt.Errorf("tailnet: %w", err)
	}
	res.Fanout = append(res.Fanout, tn)
	// Over loopback TCP, same agents and rounds.
	lb, err := fanout(ctx, work, "loopback", n, rounds, 64, func(o *controller.Options) { o.Listen = "127.0.0.1:0" }, nil)
	if err != nil {
		return nil, fmt.Errorf("loopback: %w", err)
	}
	res.Fanout = append(res.Fanout, lb)
	return res, nil
}

func fanout(ctx context.Context, work, name string, n, rounds, parallel int, ctlOpts func(*controller.Options), agentOpts func(*agent.Config)) (Fanout, error) {
	f := Fanout{Transport: name, Agents: n, Rounds: rounds}
	dir := filepath.Join(work, name)
	o := controller.Options{DataDir: filepath.Join(dir, "ctl"), HTTP: "", HeartbeatInterval: time.Second, SweepInterval: -1, Log: zap.NewNop()}
	ctlOpts(&o)
	c, err := controller.Start(ctx, o)
	if err != nil {
		return f, err
	}
	defer c.Close()
	cli, err := ctlclient.Dial(o.DataDir)
	if err != nil {
		return f, err
	}
	defer cli.Close()
	tok, err := cli.TokenCreate(ctx, "2h", true, messages.TokenScope{})
	if err != nil {
		return f, err
	}
	actx, stopAgents := context.WithCancel(context.Background())
	var wg sync.WaitGroup
	defer func() { stopAgents(); wg.Wait() }()
	t0 := time.Now()
	sem := make(chan struct{}, parallel)
	var startErr error
	var mu sync.Mutex
	var started []*agent.Agent
	for i := range n {
		cfg := agent.Config{Name: fmt.Sprintf("%s-%03d", name[:2], i), Cluster: "bench", Token: tok.Token,
			ControllerURL: c.Info().NATSURL, StateDir: filepath.Join(dir, fmt.Sprintf("a%03d", i)),
			Journal: agent.NewMemJournal(), Log: zap.NewNop(), Version: "bench"}
		if agentOpts != nil {
			agentOpts(&cfg)
		}
		a, err := agent.New(cfg)
		if err != nil {
			return f, err
		}
		started = append(started, a)
		wg.Add(1)
		go func() {
			defer wg.Done()
			sem <- struct{}{}
			released := false
			release := func() {
				if !released {
					released = true
					<-sem
				}
			}
			// Release the join slot once this agent is online (or failed).
			go func() {
				for actx.Err() == nil && a.TailnetFacts() == nil && cfg.Tailnet.Mode != "" {
					time.Sleep(50 * time.Millisecond)
				}
				mu.Lock()
				release()
				mu.Unlock()
			}()
			if err := a.Run(actx); err != nil && actx.Err() == nil {
				mu.Lock()
				startErr = fmt.Errorf("agent %s: %w", cfg.Name, err)
				release()
				mu.Unlock()
			}
		}()
	}
	for {
		st, err := cli.Status(ctx)
		mu.Lock()
		serr := startErr
		mu.Unlock()
		if serr != nil {
			return f, serr
		}
		if err == nil && st.Summary.Online == n {
			break
		}
		if ctx.Err() != nil {
			return f, fmt.Errorf("waiting for %d agents online: %w", n, ctx.Err())
		}
		time.Sleep(200 * time.Millisecond)
	}
	f.UpS = round(time.Since(t0).Seconds())
	log.Printf("%s: %d agents online in %.1fs", name, n, f.UpS)

	lat := make([]time.Duration, 0, rounds)
	for r := range rounds + 2 {
		t := time.Now()
		rep, err := cli.Run(ctx, messages.RunRequest{Target: "cluster=bench", Kind: "ping", Timeout: "60s"})
		if err != nil {
			return f, err
		}
		report, err := cli.Wait(ctx, rep.TaskID)
		if err != nil {
			return f, err
		}
		d := time.Since(t)
		for _, x := range report.Results {
			if x.Outcome != messages.OutcomeOK {
				return f, fmt.Errorf("round %d: %s: %s %s", r, x.Node, x.Outcome, x.Reason)
			}
		}
		if r >= 2 {
			lat = append(lat, d)
		}
	}
	slices.Sort(lat)
	f.P50MS, f.P99MS, f.MaxMS = ms(pct(lat, 50)), ms(pct(lat, 99)), ms(lat[len(lat)-1])

	if name == "tailnet" {
		var rtts []float64
		deadline := time.Now().Add(30 * time.Second)
		for time.Now().Before(deadline) {
			rtts, f.Direct, f.DERP = rtts[:0], 0, 0
			for _, a := range started {
				tf := a.TailnetFacts()
				if tf == nil {
					continue
				}
				switch tf.Path {
				case messages.PathDirect:
					f.Direct++
				case messages.PathDERP:
					f.DERP++
				}
				if tf.RTTMS > 0 {
					rtts = append(rtts, tf.RTTMS)
				}
			}
			if f.Direct+f.DERP == n {
				break
			}
			time.Sleep(500 * time.Millisecond)
		}
		slices.Sort(rtts)
		if len(rtts) > 0 {
			f.RTTP50MS = round(rtts[len(rtts)*50/100])
			f.RTTP99MS = round(rtts[min(len(rtts)-1, len(rtts)*99/100)])
		}
	}
	f.ProcessRSSMiB = round(rssMiB())
	log.Printf("%s: p50 %.2fms p99 %.2fms over %d rounds", name, f.P50MS, f.P99MS, rounds)
	return f, nil
}

func pct(d []time.Duration, p int) time.Duration {
	if len(d) == 0 {
		return 0
	}
	i := (len(d) - 1) * p / 100
	return d[i]
}

func ms(d time.Duration) float64 { return round(float64(d.Microseconds()) / 1000) }

func round(x float64) float64 { return float64(int64(x*100+0.5)) / 100 }

func rssMiB() float64 {
	b, err := os.ReadFile("/proc/self/statm")
	if err != nil {
		return 0
	}
	var size, res int64
	fmt.Sscan(string(b), &size, &res)
	return float64(res*int64(os.Getpagesize())) / (1 << 20)
}
