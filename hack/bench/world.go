package main

import (
	"context"
	"fmt"
	"log"
	"os"
	"path/filepath"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/internal/testenv/hostappstandin"
	"github.com/guildnet/metaguildnet/internal/testenv/rdbstandin"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/tasks"
)

type sweep struct {
	Agents     int     `json:"agents"`
	Rounds     int     `json:"rounds"`
	P50MS      float64 `json:"p50_ms"`
	MaxMS      float64 `json:"max_ms"`
	Checks     int     `json:"checks_per_sweep"`
	TargetMS   float64 `json:"target_ms"`
	WorldUpSec float64 `json:"world_up_s"`
}

type diagScan struct {
	Rounds   int     `json:"rounds"`
	P50MS    float64 `json:"p50_ms"`
	MaxMS    float64 `json:"max_ms"`
	TargetMS float64 `json:"target_ms"`
}

// worldBench runs 100 simulated agents (real task loop, real checks) in
// cluster "world" against the test world — a real kube-apiserver seeded
// like GuildNet, the RethinkDB and host-app stand-ins — and times full
// verification sweeps of every layer (network, host, cluster, database,
// application) and single-node diagnoses end to end through
// the controller. Network checks find no tailscaled here and fail fast;
// they still run.
func worldBench(cli *ctlclient.Client, natsURL, token, work string, n, rounds int) (*sweep, *diagScan, func()) {
	if m := testenv.Missing(testenv.NeedKube); m != "" {
		log.Printf("verify sweep: skipped (%s missing: run make testenv)", m)
		return nil, nil, func() {}
	}
	t0 := time.Now()
	ctx, cancel := context.WithTimeout(context.Background(), 4*time.Minute)
	defer cancel()
	kube, err := testenv.StartKube(ctx, testenv.KubeOptions{Dir: filepath.Join(work, "kube")})
	if err != nil {
		log.Fatalf("world: %v", err)
	}
	stop := []func(){kube.Stop}
	cleanup := func() {
		for i := len(stop) - 1; i >= 0; i-- {
			stop[i]()
		}
	}
	if _, err := testenv.SeedGuildNet(ctx, kube.RESTConfig(), testenv.SeedOptions{Nodes: 3, Workspaces: []string{"demo"}}); err != nil {
		log.Fatalf("seed: %v", err)
	}
	rdb, err := rdbstandin.Start(rdbstandin.Options{Databases: map[string][]string{"org_guildnet__main": {"_schemas", "_audit", "_info"}}})
	if err != nil {
		log.Fatal(err)
	}
	stop = append(stop, func() { rdb.Close() })
	app, err := hostappstandin.Start(hostappstandin.Options{Clusters: []hostappstandin.Cluster{{ID: "c1", Name: "world", Status: "ok"}}})
	if err != nil {
		log.Fatal(err)
	}
	stop = append(stop, app.Close)
	ca := filepath.Join(work, "hostapp-ca.pem")
	app.WriteCA(ca)
	up := time.Since(t0)
	settings := config.Settings{"KUBECONFIG": kube.KubeconfigPath(), "RETHINKDB_ADDR": rdb.Addr(), "METAGN_RDB_DATABASES": "org_guildnet__main",
		"HOSTAPP_URL": app.URL(), "METAGN_HOSTAPP_CA": ca, "TS_SOCKET": filepath.Join(work, "no-tailscaled.sock"),
		// The agents run on the host, whose resolver is not on loopback:
		// dns_resolution's default name would send a query off the machine.
		"METAGN_DNS_NAME": "localhost"}
	var cancels []context.CancelFunc
	for i := 0; i < n; i++ {
		name := fmt.Sprintf("world%03d", i)
		role := "worker"
		if i == 0 {
			role = "controlplane"
		}
		a, err := agent.New(agent.Config{ControllerURL: natsURL, Token: token, Name: name, Cluster: "world", Role: role,
			StateDir: filepath.Join(work, "world", name), Version: "bench", Tasks: tasks.Builtin(), Settings: settings,
			Log: zap.NewNop(), Journal: agent.NewMemJournal()})
		if err != nil {
			log.Fatal(err)
		}
		actx, acancel := context.WithCancel(context.Background())
		cancels = append(cancels, acancel)
		go a.Run(actx)
	}
	stop = append(stop, func() {
		for _, c := range cancels {
			c()
		}
	})
	deadline := time.Now().Add(2 * time.Minute)
	for {
		st, err := cli.Status(context.Background())
		online := 0
		if err == nil {
			for _, nd := range st.Nodes {
				if nd.Cluster == "world" && nd.State == messages.StateOnline {
					online++
				}
			}
		}
		if online == n {
			break
		}
		if time.Now().After(deadline) {
			log.Fatalf("world agents: %d of %d online", online, n)
		}
		time.Sleep(200 * time.Millisecond)
	}
	var lat []time.Duration
	checks := 0
	for r := 0; r < rounds+1; r++ {
		t := time.Now()
		rep, err := cli.Verify(context.Background(), messages.VerifyRequest{Cluster: "world"})
		if err != nil {
			log.Fatalf("verify: %v", err)
		}
		if r > 0 {
			lat = append(lat, time.Since(t))
		}
		checks = 0
		for _, l := range rep.Layers {
			checks += len(l.Checks)
		}
	}
	sw := &sweep{Agents: n, Rounds: rounds, P50MS: ms(pct(lat, 50)), MaxMS: ms(pct(lat, 100)), Checks: checks, TargetMS: 3000, WorldUpSec: up.Seconds()}
	var dl []time.Duration
	for r := 0; r < rounds+1; r++ {
		t := time.Now()
		if _, err := cli.Diagnose(context.Background(), messages.DiagnoseRequest{Node: "world000"}); err != nil {
			log.Fatalf("diagnose: %v", err)
		}
		if r > 0 {
			dl = append(dl, time.Since(t))
		}
	}
	ds := &diagScan{Rounds: rounds, P50MS: ms(pct(dl, 50)), MaxMS: ms(pct(dl, 100)), TargetMS: 1000}
	_ = os.Remove(ca)
	return sw, ds, cleanup
}
