package main

import (
	"bufio"
	"context"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/siderolabs/talos/pkg/machinery/api/machine"
	"github.com/siderolabs/talos/pkg/machinery/client"
	clientconfig "github.com/siderolabs/talos/pkg/machinery/client/config"
	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

// peerEnv makes the test binary, run through `testworld exec`, act as a
// tailnet peer that checks the router's routes (see TestMain).
const peerEnv = "MGN_TESTWORLD_PEER_CHECK"

func TestMain(m *testing.M) {
	if os.Getenv(peerEnv) == "1" {
		if err := peerCheck(); err != nil {
			fmt.Fprintln(os.Stderr, "peer check:", err)
			os.Exit(1)
		}
		os.Exit(0)
	}
	os.Exit(m.Run())
}

// peerCheck joins the world's tailnet from inside the namespace and waits
// until the router's approved routes show as its primary routes.
func peerCheck() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	dir, err := os.MkdirTemp("", "mgn-peer-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	srv, _, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{
		ControlURL: os.Getenv("TS_LOGIN_SERVER"), AuthKey: os.Getenv("TS_AUTHKEY"),
		Hostname: "agent-check", Dir: dir, Ephemeral: true,
	})
	if err != nil {
		return err
	}
	defer srv.Close()
	lc, err := srv.LocalClient()
	if err != nil {
		return err
	}
	want := strings.Split(routerRoutes, ",")
	slices.Sort(want)
	var got []string
	for ctx.Err() == nil {
		st, err := lc.Status(ctx)
		if err != nil {
			return err
		}
		got = nil
		for _, p := range st.Peer {
			if p.HostName == routerHostname && p.PrimaryRoutes != nil {
				for _, pr := range p.PrimaryRoutes.All() {
					got = append(got, pr.String())
				}
			}
		}
		slices.Sort(got)
		if slices.Equal(got, want) {
			return nil
		}
		select {
		case <-ctx.Done():
		case <-time.After(200 * time.Millisecond):
		}
	}
	return fmt.Errorf("router primary routes = %v, want %v", got, want)
}

func readEnv(t *testing.T, path string) map[string]string {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	env := map[string]string{}
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		k, v, ok := strings.Cut(strings.TrimPrefix(sc.Text(), "export "), "=")
		if ok && !strings.HasPrefix(k, "#") {
			env[k] = strings.Trim(v, "'")
		}
	}
	return env
}

// TestUpExecDown runs the real command: up writes DIR/env whose addresses
// work, exec runs a tailnet peer in a namespace that sees the router's
// approved routes, down stops everything and removes DIR.
func TestUpExecDown(t *testing.T) {
	testenv.Require(t, testenv.NeedKube, testenv.NeedHeadscale)
	if err := probeNetNS(); err != nil {
		testenv.Require(t, testenv.NeedNetNS) // skips, or fails with CI=true
	}
	bin := filepath.Join(t.TempDir(), "testworld")
	if out, err := exec.Command("go", "build", "-o", bin, ".").CombinedOutput(); err != nil {
		t.Fatalf("build testworld: %v\n%s", err, out)
	}
	dir := filepath.Join(t.TempDir(), "world")
	run := func(args ...string) string {
		t.Helper()
		out, err := exec.Command(bin, args...).CombinedOutput()
		if err != nil {
			t.Fatalf("testworld %v: %v\n%s", args, err, out)
		}
		return string(out)
	}
	start := time.Now()
	run("up", "--dir", dir, "--nodes", "2")
	t.Cleanup(func() { _ = exec.Command(bin, "down", "--dir", dir).Run() })
	t.Logf("up in %v", time.Since(start))
	env := readEnv(t, filepath.Join(dir, "env"))
	for _, k := range []string{"KUBECONFIG", "HEADSCALE_URL", "RETHINKDB_ADDR", "TS_AUTHKEY", "TS_ROUTES", "TALOS_ENDPOINT", "TALOSCONFIG", "HOSTAPP_URL", "METAGN_HOSTAPP_CA"} {
		if env[k] == "" {
			t.Errorf("env has no %s", k)
		}
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()

	cfg, err := clientcmd.BuildConfigFromFlags("", env["KUBECONFIG"])
	if err != nil {
		t.Fatal(err)
	}
	cs, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		t.Fatal(err)
	}
	nodes, err := cs.CoreV1().Nodes().List(ctx, metav1.ListOptions{})
	if err != nil || len(nodes.Items) != 2 {
		t.Errorf("nodes: %v, %v", err, nodes)
	}

	resp, err := http.Get(env["HEADSCALE_URL"] + "/health")
	if err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("headscale health: %v %v", err, resp)
	} else {
		resp.Body.Close()
	}

	sess, err := r.Connect(r.ConnectOpts{Address: env["RETHINKDB_ADDR"], Username: env["RETHINKDB_USER"], Password: env["RETHINKDB_PASS"]})
	if err != nil {
		t.Fatalf("rethinkdb stand-in: %v", err)
	}
	var dbs []string
	if cur, err := r.DBList().Run(sess); err != nil {
		t.Errorf("db list: %v", err)
	} else if err := cur.All(&dbs); err != nil || !slices.Contains(dbs, "org_demo__main") {
		t.Errorf("db list = %v, %v", dbs, err)
	}
	sess.Close()

	caPEM, err := os.ReadFile(env["METAGN_HOSTAPP_CA"])
	if err != nil {
		t.Fatal(err)
	}
	pool := x509.NewCertPool()
	pool.AppendCertsFromPEM(caPEM)
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}}
	if resp, err := hc.Get(env["HOSTAPP_URL"] + "/healthz"); err != nil || resp.StatusCode != http.StatusOK {
		t.Errorf("host app /healthz (verifying its CA): %v %v", err, resp)
	} else {
		resp.Body.Close()
	}

	tcfg, err := clientconfig.Open(env["TALOSCONFIG"])
	if err != nil {
		t.Fatal(err)
	}
	tc, err := client.New(ctx, client.WithConfig(tcfg))
	if err != nil {
		t.Fatal(err)
	}
	if v, err := tc.Version(ctx); err != nil || len(v.Messages) == 0 {
		t.Errorf("talos version: %v %v", v, err)
	}
	if m, err := tc.EtcdMemberList(ctx, &machine.EtcdMemberListRequest{}); err != nil || len(m.Messages) == 0 || len(m.Messages[0].Members) == 0 {
		t.Errorf("talos etcd members (bootstrapped): %v %v", m, err)
	}
	tc.Close()

	self, err := os.Executable()
	if err != nil {
		t.Fatal(err)
	}
	start = time.Now()
	cmd := exec.Command(bin, "exec", "--dir", dir, "--", self)
	cmd.Env = append(os.Environ(), peerEnv+"=1", "TS_LOGIN_SERVER="+env["TS_LOGIN_SERVER"], "TS_AUTHKEY="+env["TS_AUTHKEY"])
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("tailnet peer in the namespace: %v\n%s", err, out)
	}
	t.Logf("peer in a namespace joined and saw the approved routes in %v", time.Since(start))

	run("down", "--dir", dir)
	if _, err := os.Stat(dir); !os.IsNotExist(err) {
		t.Errorf("%s still there after down: %v", dir, err)
	}
	if _, err := http.Get(env["HEADSCALE_URL"] + "/health"); err == nil {
		t.Error("headscale still answers after down")
	}
}

// TestStartTSNetRefusesOutsideNetNS: this test process is not in a
// namespace, so a tailnet node must not start here.
func TestStartTSNetRefusesOutsideNetNS(t *testing.T) {
	if testenv.InNetNS() {
		testenv.Skip(t, "running inside a loopback-only namespace: the refusal cannot be observed")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	srv, _, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{ControlURL: "http://127.0.0.1:9", AuthKey: "k", Hostname: "must-not-start", Dir: t.TempDir()})
	if err == nil {
		srv.Close()
		t.Fatal("StartTSNet started a tailnet node outside a network namespace")
	}
	if !strings.Contains(err.Error(), "loopback-only network namespace") {
		t.Errorf("error does not say why: %v", err)
	}
}
