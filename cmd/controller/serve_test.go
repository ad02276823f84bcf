package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/internal/cli"
)

// A limit that cannot work stops `controller serve` before it starts
// anything: exit 2, and the message names the flag and says why.
func TestServeRefusesLimitsThatCannotWork(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--offline-after", "2"}, "--offline-after 2: must be at least 3: a node is stale after 2 missed heartbeats"},
		{[]string{"--offline-after", "-1"}, "--offline-after -1: must be at least 3"},
		{[]string{"--heartbeat-interval", "-5s"}, "--heartbeat-interval -5s: must be at least 10ms"},
		{[]string{"--max-message-bytes", "100"}, "--max-message-bytes 100: must be between 4096"},
		{[]string{"--max-message-bytes", "1000000000"}, "--max-message-bytes 1000000000: must be between"},
		{[]string{"--retention", "-1h"}, "--retention -1h0m0s: must be positive"},
		{[]string{"--sweep-layer-interval", "host=-1s"}, "--sweep-layer-interval host=-1s: must be positive"},
		{[]string{"--sweep-layer-interval", "Host=1s"}, `"Host" is not a layer name`},
		{[]string{"--advertise", "http://c1.example:4222"}, `--advertise "http://c1.example:4222": want one nats://HOST:PORT`},
		{[]string{"--advertise", "nats://a:1,nats://b:2"}, `want one nats://HOST:PORT`},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			root := newRoot()
			root.SetArgs(append([]string{"serve", "--data-dir", dir, "--listen", "127.0.0.1:0", "--http", ""}, tt.args...))
			var stderr bytes.Buffer
			if code := cli.Execute(root, &stderr); code != cli.ExitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, cli.ExitUsage, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("stderr %q, want it to contain %q", stderr.String(), tt.want)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("the data dir was created (%v): serve started before refusing", err)
			}
		})
	}
}

// The dashboard and /metrics in plain text off loopback are refused before
// anything starts.
func TestServeRefusesPlainHTTPOffLoopback(t *testing.T) {
	for _, tt := range []struct {
		args []string
		want string
	}{
		{[]string{"--http", "0.0.0.0:8222"}, "--http 0.0.0.0:8222 is not a loopback address"},
		{[]string{"--http", "127.0.0.1:0", "--http-tls-cert", "c.pem"}, "--http-tls-cert and --http-tls-key go together"},
	} {
		t.Run(strings.Join(tt.args, " "), func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "data")
			root := newRoot()
			root.SetArgs(append([]string{"serve", "--data-dir", dir, "--listen", "127.0.0.1:0"}, tt.args...))
			var stderr bytes.Buffer
			if code := cli.Execute(root, &stderr); code != cli.ExitUsage {
				t.Fatalf("exit %d, want %d; stderr %q", code, cli.ExitUsage, stderr.String())
			}
			if !strings.Contains(stderr.String(), tt.want) {
				t.Fatalf("stderr %q, want it to contain %q", stderr.String(), tt.want)
			}
			if _, err := os.Stat(dir); !os.IsNotExist(err) {
				t.Errorf("the data dir was created (%v): serve started before refusing", err)
			}
		})
	}
}

func TestDashboardLoginRefusesABadTTL(t *testing.T) {
	root := newRoot()
	root.SetArgs([]string{"dashboard", "login", "--data-dir", t.TempDir(), "--ttl", "soon"})
	var stderr bytes.Buffer
	if code := cli.Execute(root, &stderr); code != cli.ExitUsage || !strings.Contains(stderr.String(), `--ttl "soon"`) {
		t.Fatalf("exit %d, stderr %q", code, stderr.String())
	}
}
