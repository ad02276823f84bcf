package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

// setupBareFigures is setup of one cluster of the bare test world from
// nothing (3 Kubernetes nodes: controlplane, worker, router, plus the host
// app's machine) by the real controller and agent processes through the
// CLI, one `setup apply --layer L` per layer in order, each timed with its
// verification; target < 60 s in total.
type setupBareFigures struct {
	Nodes     int                `json:"nodes"`
	TotalMS   float64            `json:"total_ms"`
	LayersMS  map[string]float64 `json:"layers_ms"`
	WorldUpMS float64            `json:"world_up_ms"`
	Skipped   string             `json:"skipped,omitempty"`
}

func setupBareBench(bin, work string) *setupBareFigures {
	f := &setupBareFigures{LayersMS: map[string]float64{}}
	if m := testenv.Missing(testenv.NeedKube, testenv.NeedControlPlane, testenv.NeedHeadscale, testenv.NeedTailscaled); m != "" {
		f.Skipped = m + " (make testenv)"
		return f
	}
	if os.Geteuid() != 0 {
		f.Skipped = "needs root: the bare world's tailscaleds run in their own network namespaces"
		return f
	}
	if err := setupBareRun(bin, work, f); err != nil {
		f.Skipped = "failed: " + err.Error()
	}
	return f
}

func setupBareRun(bin, work string, f *setupBareFigures) error {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	tw := filepath.Join(work, "testworld")
	if out, err := exec.CommandContext(ctx, "go", "build", "-o", tw, "./hack/testworld").CombinedOutput(); err != nil {
		return fmt.Errorf("build testworld: %v: %s", err, out)
	}
	dir := filepath.Join(work, "bare")
	t0 := time.Now()
	if out, err := exec.CommandContext(ctx, tw, "up", "--dir", dir, "--bare", "--clusters", "1").CombinedOutput(); err != nil {
		return fmt.Errorf("testworld up --bare: %v: %s", err, out)
	}
	defer exec.Command(tw, "down", "--dir", dir).Run()
	f.WorldUpMS = ms(time.Since(t0))

	data := filepath.Join(work, "setup-controller")
	var procs []*exec.Cmd
	defer func() {
		for _, p := range procs {
			syscall.Kill(-p.Process.Pid, syscall.SIGKILL)
			p.Wait()
		}
	}()
	start := func(env []string, name string, args ...string) error {
		c := exec.Command(filepath.Join(bin, name), args...)
		c.Env = append(os.Environ(), env...)
		c.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
		if err := c.Start(); err != nil {
			return err
		}
		procs = append(procs, c)
		return nil
	}
	if err := start(nil, "controller", "serve", "--data-dir", data, "--listen", "127.0.0.1:0", "--http", "", "--log-level", "warn",
		"--heartbeat-interval", "500ms"); err != nil {
		return err
	}
	var info runinfo.Info
	var err error
	for range 200 {
		if info, err = runinfo.Read(data); err == nil {
			break
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err != nil {
		return err
	}
	cli, err := ctlclient.Dial(data)
	if err != nil {
		return err
	}
	defer cli.Close()
	tok, err := cli.TokenCreate(ctx, "1h", true, messages.TokenScope{})
	if err != nil {
		return err
	}
	tokFile := filepath.Join(work, "setup-token")
	if err := os.WriteFile(tokFile, []byte(tok.Token+"\n"), 0o600); err != nil {
		return err
	}
	ents, err := os.ReadDir(filepath.Join(dir, "nodes"))
	if err != nil {
		return err
	}
	for _, e := range ents {
		env, err := envFile(filepath.Join(dir, "nodes", e.Name(), "env"))
		if err != nil {
			return err
		}
		if err := start(env, "agent", "run", "--controller", info.NATSURL, "--token-file", tokFile,
			"--state-dir", filepath.Join(work, "setup-agents", e.Name()), "--log-level", "warn"); err != nil {
			return err
		}
	}
	f.Nodes = len(ents)
	waitOnline(cli, len(ents))
	var total time.Duration
	for _, layer := range []string{messages.LayerNetwork, messages.LayerCluster, messages.LayerDatabase, messages.LayerApplication} {
		t := time.Now()
		out, err := exec.CommandContext(ctx, filepath.Join(bin, "controller"), "setup", "apply", "-f", filepath.Join(dir, "fleet.yaml"),
			"--layer", layer, "--yes", "--json", "--data-dir", data).Output()
		d := time.Since(t)
		var run messages.SetupRun
		if json.Unmarshal(out, &run) != nil || run.Status != messages.RunSucceeded {
			return fmt.Errorf("setup apply --layer %s: %v: %s", layer, err, bytes.TrimSpace(out))
		}
		f.LayersMS[layer] = ms(d)
		total += d
	}
	f.TotalMS = ms(total)
	return nil
}

// envFile reads NAME='value' lines (the world's node env files).
func envFile(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	var out []string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, errors.New(path + ": not NAME=value: " + line)
		}
		if len(v) >= 2 && v[0] == '\'' && v[len(v)-1] == '\'' {
			v = strings.ReplaceAll(v[1:len(v)-1], `'\''`, `'`)
		}
		out = append(out, k+"="+v)
	}
	return out, nil
}
