// Command dashbench times the web dashboard in Chromium with a fleet of
// simulated nodes (make bench; writes bench-dashboard.json, which
// hack/bench merges into bench.json): time to first render of the fleet,
// cluster and node pages, and time from a change in the controller (a node
// removed, announced on mgn.evt.node_state) to the open fleet page showing
// it. Targets: < 1 s and
// < 2 s.
//
// A real controller (embedded NATS, JetStream on disk) and N simulated
// agents (the real agent task loop with an in-memory journal, each on its
// own NATS connection) run in this process, and Chromium beside it, all in
// a loopback-only network namespace: the browser never reaches anything
// but the controller.
package main

import (
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"log"
	"os"
	"os/exec"
	"path/filepath"
	"runtime/debug"
	"slices"
	"strings"
	"time"

	"github.com/chromedp/chromedp"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/hack/internal/sim"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

type pageTime struct {
	Page string `json:"page"`
	// FirstRenderMS is navigation start to first contentful paint, p50 and
	// max over the rounds; ServerMS the HTML response's own time.
	FirstRenderP50MS float64 `json:"first_render_p50_ms"`
	FirstRenderMaxMS float64 `json:"first_render_max_ms"`
	ServerP50MS      float64 `json:"server_p50_ms"`
	Bytes            int     `json:"html_bytes"`
}

type result struct {
	Nodes    int        `json:"nodes"`
	Clusters int        `json:"clusters"`
	Rounds   int        `json:"rounds"`
	Pages    []pageTime `json:"pages"`
	// LiveUpdate is from the controller announcing a node's removal to the
	// open fleet page showing it (p50 and max).
	LiveUpdateP50MS float64 `json:"live_update_p50_ms"`
	LiveUpdateMaxMS float64 `json:"live_update_max_ms"`
	TargetRenderMS  float64 `json:"target_first_render_ms"`
	TargetUpdateMS  float64 `json:"target_live_update_ms"`
	Chromium        string  `json:"chromium"`
	Skipped         string  `json:"skipped,omitempty"`
}

func main() {
	n := flag.Int("nodes", 5000, "simulated nodes")
	clusters := flag.Int("clusters", 50, "clusters they are spread over")
	rounds := flag.Int("rounds", 5, "measured rounds")
	out := flag.String("out", "bench-dashboard.json", "where to write the figures")
	flag.Parse()
	log.SetFlags(0)
	testenv.RunInNetNS(func() int { return run(*n, *clusters, *rounds, *out) })
}

func write(path string, r result) {
	b, _ := json.MarshalIndent(r, "", "  ")
	if err := os.WriteFile(path, append(b, '\n'), 0o644); err != nil {
		log.Fatal(err)
	}
	log.Printf("wrote %s", path)
}

func run(n, clusters, rounds int, out string) int {
	res := result{Nodes: n, Clusters: clusters, Rounds: rounds, TargetRenderMS: 1000, TargetUpdateMS: 2000}
	if !testenv.InNetNS() {
		res.Skipped = "no loopback-only network namespace (needs root for unshare): the browser is never run outside one"
		log.Print("dashboard bench: skipped: " + res.Skipped)
		write(out, res)
		return 0
	}
	browserPath := ""
	for _, name := range []string{"chromium", "chromium-browser"} {
		if p, err := exec.LookPath(name); err == nil {
			browserPath = p
			break
		}
	}
	if browserPath == "" {
		res.Skipped = "chromium not installed (make apt-deps)"
		log.Print("dashboard bench: skipped: " + res.Skipped)
		write(out, res)
		return 0
	}
	if v, err := exec.Command(browserPath, "--version").Output(); err == nil {
		res.Chromium = strings.TrimSpace(string(v))
	}
	// The simulated agents share this process's heap (see hack/bench).
	debug.SetGCPercent(400)
	work, err := os.MkdirTemp("", "mgn-dashbench")
	if err != nil {
		log.Fatal(err)
	}
	defer os.RemoveAll(work)
	ctx := context.Background()
	c, err := controller.Start(ctx, controller.Options{DataDir: filepath.Join(work, "controller"), Listen: "127.0.0.1:0",
		HTTP: "127.0.0.1:0", SweepInterval: -1, Log: zap.NewNop()})
	if err != nil {
		log.Fatal(err)
	}
	defer c.Close()
	cli, err := ctlclient.Dial(filepath.Join(work, "controller"))
	if err != nil {
		log.Fatal(err)
	}
	defer cli.Close()
	tok, err := cli.TokenCreate(ctx, "2h", true, messages.TokenScope{})
	if err != nil {
		log.Fatal(err)
	}
	url := c.Info().NATSURL
	t0 := time.Now()
	var stops []context.CancelFunc
	defer func() {
		for _, s := range stops {
			s()
		}
	}()
	for i := 0; i < n; i++ {
		stops = append(stops, startSim(url, tok.Token, fmt.Sprintf("sim%05d", i), fmt.Sprintf("c%02d", i%clusters), work))
	}
	waitOnline(cli, n)
	log.Printf("%d simulated nodes online in %d clusters (%.1fs)", n, clusters, time.Since(t0).Seconds())

	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(browserPath), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 800), chromedp.UserDataDir(filepath.Join(work, "chromium")))
	actx, cancelA := chromedp.NewExecAllocator(ctx, opts...)
	defer cancelA()
	bctx, cancelB := chromedp.NewContext(actx)
	defer cancelB()
	if err := chromedp.Do(bctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		log.Fatalf("start chromium: %v", err)
	}
	base := c.Info().HTTPURL
	for _, p := range []string{"/", "/cluster?name=c00", "/node?name=sim00001"} {
		pt := pageTime{Page: p}
		var renders, servers []float64
		for r := 0; r < rounds+1; r++ {
			m, err := measurePage(bctx, base+p)
			if err != nil {
				log.Fatalf("%s: %v", p, err)
			}
			if r == 0 {
				continue // warm-up: the browser's first start of a renderer
			}
			renders = append(renders, m.FCP)
			servers = append(servers, m.Server)
			pt.Bytes = m.Bytes
		}
		pt.FirstRenderP50MS, pt.FirstRenderMaxMS = p50(renders), slices.Max(renders)
		pt.ServerP50MS = p50(servers)
		res.Pages = append(res.Pages, pt)
		log.Printf("first render %-22s p50 %6.1f ms  max %6.1f ms  (server %5.1f ms, %d bytes)", p, pt.FirstRenderP50MS, pt.FirstRenderMaxMS, pt.ServerP50MS, pt.Bytes)
	}

	// Live update: the fleet page open, a node is removed (the
	// controller announces it on mgn.evt.node_state, as it does a node
	// going offline, without waiting the liveness time).
	announced := make(chan time.Time, 16)
	sub, err := cli.Conn().Subscribe(messages.EventSubject("node_state"), func(m *nats.Msg) {
		if ev, err := messages.Decode[messages.Event](m.Data, 0); err == nil && ev.To == "removed" {
			announced <- time.Now()
		}
	})
	if err != nil {
		log.Fatal(err)
	}
	defer sub.Unsubscribe()
	if err := chromedp.Do(bctx, chromedp.Navigate(base+"/")); err != nil {
		log.Fatal(err)
	}
	if err := poll(bctx, `document.getElementById('conn').textContent === 'live'`, 10*time.Second); err != nil {
		log.Fatalf("fleet page never live: %v", err)
	}
	var updates []float64
	for r := 0; r < rounds; r++ {
		want := fmt.Sprintf("%d nodes", n-r-1)
		if err := chromedp.Do(bctx, chromedp.Evaluate[chromedp.Void](fmt.Sprintf(`window.__shown = 0;
new MutationObserver(function () { var t = document.querySelector('[data-count="total"]');
  if (!window.__shown && t && t.textContent === %q) window.__shown = Date.now(); })
 .observe(document.getElementById('live'), {childList: true, subtree: true, characterData: true});`, want))); err != nil {
			log.Fatal(err)
		}
		name := fmt.Sprintf("sim%05d", n-1-r)
		stops[n-1-r]()
		rctx, cancel := context.WithTimeout(ctx, 30*time.Second)
		_, err := cli.NodesRemove(rctx, name)
		cancel()
		if err != nil {
			log.Fatalf("remove %s: %v", name, err)
		}
		var at time.Time
		select {
		case at = <-announced:
		case <-time.After(30 * time.Second):
			log.Fatal("the removal was never announced")
		}
		if err := poll(bctx, `window.__shown > 0`, 30*time.Second); err != nil {
			log.Fatalf("the fleet page never showed %q: %v", want, err)
		}
		shown, err := chromedp.Run(bctx, chromedp.Evaluate[float64](`window.__shown`))
		if err != nil {
			log.Fatal(err)
		}
		d := shown - float64(at.UnixMicro())/1000
		updates = append(updates, d)
		log.Printf("live update %d: %.0f ms from the controller's announcement to the page", r, d)
	}
	res.LiveUpdateP50MS, res.LiveUpdateMaxMS = p50(updates), slices.Max(updates)
	write(out, res)
	fmt.Printf("\ndashboard, %d nodes in %d clusters (Chromium): fleet page first render p50 %.0f ms (target < 1000 ms); live update p50 %.0f ms, max %.0f ms (target < 2000 ms)\n",
		n, clusters, res.Pages[0].FirstRenderP50MS, res.LiveUpdateP50MS, res.LiveUpdateMaxMS)
	return 0
}

type pageMeasure struct {
	FCP, Server float64
	Bytes       int
}

// measurePage opens url in a fresh navigation and reads the browser's own
// timings: first contentful paint, and the HTML response's time.
func measurePage(ctx context.Context, url string) (pageMeasure, error) {
	var m pageMeasure
	if err := chromedp.Do(ctx, chromedp.Navigate("about:blank"), chromedp.Navigate(url)); err != nil {
		return m, err
	}
	if err := poll(ctx, `performance.getEntriesByName('first-contentful-paint').length > 0`, 30*time.Second); err != nil {
		return m, fmt.Errorf("no first contentful paint: %w", err)
	}
	s, err := chromedp.Run(ctx, chromedp.Evaluate[string](`JSON.stringify({
  fcp: performance.getEntriesByName('first-contentful-paint')[0].startTime,
  server: (function (n) { return n.responseEnd - n.requestStart; })(performance.getEntriesByType('navigation')[0]),
  bytes: document.documentElement.outerHTML.length })`))
	if err != nil {
		return m, err
	}
	var v struct {
		FCP    float64 `json:"fcp"`
		Server float64 `json:"server"`
		Bytes  int     `json:"bytes"`
	}
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		return m, err
	}
	return pageMeasure{FCP: v.FCP, Server: v.Server, Bytes: v.Bytes}, nil
}

// poll waits until expr is truthy in the page, up to d; a poll that a
// navigation under way ended early is polled again.
func poll(ctx context.Context, expr string, d time.Duration) error {
	deadline := time.Now().Add(d)
	for {
		left := time.Until(deadline)
		pctx, cancel := context.WithTimeout(ctx, left+5*time.Second)
		_, err := chromedp.Run(pctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(left), chromedp.WithPollingInterval(10*time.Millisecond)))
		cancel()
		if err == nil || time.Now().After(deadline) {
			return err
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func p50(v []float64) float64 {
	s := slices.Clone(v)
	slices.Sort(s)
	return s[(len(s)-1)/2]
}

func startSim(url, token, name, cluster, work string) context.CancelFunc {
	return sim.Start(url, token, name, cluster, work)
}

func waitOnline(cli *ctlclient.Client, n int) {
	sim.WaitOnline(cli, n, 10*time.Minute, time.Second)
}
