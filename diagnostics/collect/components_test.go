package collect

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"testing"
)

// listen opens a real loopback listener that accepts and closes.
func listen(t *testing.T, network, addr string) net.Listener {
	t.Helper()
	l, err := net.Listen(network, addr)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { l.Close() })
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	return l
}

// closedAddr returns a loopback address nothing listens on.
func closedAddr(t *testing.T) string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestComponents(t *testing.T) {
	dir := t.TempDir()
	sock := filepath.Join(dir, "tailscaled.sock")
	hostapp := listen(t, "tcp", "127.0.0.1:0")
	rdb := listen(t, "tcp", "127.0.0.1:0")
	listen(t, "unix", sock)
	healthy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path == "/health" {
			w.Write([]byte(`{"status":"pass"}`))
			return
		}
		http.NotFound(w, r)
	}))
	defer healthy.Close()
	broken := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		http.Error(w, "down", http.StatusServiceUnavailable)
	}))
	defer broken.Close()

	tests := []struct {
		name     string
		settings map[string]string
		want     map[string]float64 // metric -> value; -1 means absent
	}{
		{"all up", map[string]string{
			"TS_SOCKET": sock, "LISTEN_LOCAL": hostapp.Addr().String(), "RETHINKDB_ADDR": rdb.Addr().String(), "HEADSCALE_URL": healthy.URL,
		}, map[string]float64{"tailscaled_up": 1, "hostapp_port_up": 1, "rethinkdb_port_up": 1, "headscale_health_up": 1}},
		{"all down", map[string]string{
			"TS_SOCKET": filepath.Join(dir, "missing.sock"), "HOSTAPP_URL": "https://" + closedAddr(t) + "/", "RETHINKDB_ADDR": closedAddr(t), "HEADSCALE_URL": broken.URL,
		}, map[string]float64{"tailscaled_up": 0, "hostapp_port_up": 0, "rethinkdb_port_up": 0, "headscale_health_up": 0, "rethinkdb_connect_ms": -1}},
		{"not configured", map[string]string{"TS_SOCKET": filepath.Join(dir, "missing.sock")},
			map[string]float64{"tailscaled_up": 0, "rethinkdb_port_up": -1, "headscale_health_up": -1}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			env := &Env{Node: "n1", Settings: tc.settings, WorkDir: dir, Home: dir, ProcRoot: t.TempDir()}
			env.Prepare()
			s, err := Components{}.Collect(context.Background(), env)
			if err != nil {
				t.Fatal(err)
			}
			for m, want := range tc.want {
				got, ok := s.Metrics[m]
				if want == -1 && ok || want != -1 && (!ok || got != want) {
					t.Errorf("%s = %v (present %v), want %v; data %+v", m, got, ok, want, string(s.Data))
				}
			}
			if tc.name == "all up" && s.Metrics["rethinkdb_connect_ms"] < 1 {
				t.Errorf("rethinkdb_connect_ms = %v", s.Metrics["rethinkdb_connect_ms"])
			}
		})
	}
}

func TestHostPort(t *testing.T) {
	for in, want := range map[string]string{
		"https://100.64.0.1:8090/": "100.64.0.1:8090",
		"https://host.example":     "host.example:443",
		"http://h":                 "h:80",
		"10.0.0.5":                 "10.0.0.5:28015",
		"10.0.0.5:1234":            "10.0.0.5:1234",
		"[fd7a::1]":                "[fd7a::1]:28015",
	} {
		if got := hostPort(in, "28015"); got != want {
			t.Errorf("hostPort(%q) = %q, want %q", in, got, want)
		}
	}
}
