package hostappstandin

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes/fake"
)

func startServer(t *testing.T, opts Options) *Server {
	t.Helper()
	s, err := Start(opts)
	if err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(s.Close)
	return s
}

// trustingClient is an http.Client that trusts only the stand-in's CA.
func trustingClient(t *testing.T, caPEM []byte) *http.Client {
	t.Helper()
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		t.Fatal("CAPEM is not a PEM certificate")
	}
	tr := &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}}
	t.Cleanup(tr.CloseIdleConnections)
	return &http.Client{Transport: tr, Timeout: 10 * time.Second,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
}

type answer struct {
	code        int
	contentType string
	body        string
}

func get(t *testing.T, c *http.Client, u string) answer {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodGet, u, nil)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := c.Do(req)
	if err != nil {
		t.Fatalf("GET %s: %v", u, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if err != nil {
		t.Fatalf("reading %s: %v", u, err)
	}
	return answer{resp.StatusCode, resp.Header.Get("Content-Type"), string(b)}
}

func TestEndpoints(t *testing.T) {
	s := startServer(t, Options{
		Clusters: []Cluster{{ID: "c1", Name: "lab"}, {ID: "c2", Name: "edge", Status: StatusUnknown}},
		Servers:  []string{"ws-demo"},
	})
	c := trustingClient(t, s.CAPEM())

	tests := []struct {
		name     string
		path     string
		wantCode int
		wantType string
		wantBody string // exact for text, JSON-equal for JSON
	}{
		{"healthz", "/healthz", 200, "text/plain; charset=utf-8", "ok"},
		{"api health", "/api/health", 200, "application/json",
			`{"headscale":[{"id":"headscale","status":"ok"}],"clusters":[{"id":"c1","name":"lab","status":"ok","code":200,"error":""},{"id":"c2","name":"edge","status":"unknown","code":0,"error":""}]}`},
		{"cluster health ok", "/api/cluster/c1/health", 200, "application/json", `{"k8s":{"ok":true},"rdb":{"ok":true,"error":""}}`},
		{"cluster health unknown", "/api/cluster/c2/health", 200, "application/json", `{"k8s":{"ok":false},"rdb":{"ok":false,"error":""}}`},
		{"cluster not found", "/api/cluster/nope/health", 404, "application/json", `{"error":"cluster not found: nope"}`},
		{"proxy known server", "/proxy/server/ws-demo/", 200, "text/plain; charset=utf-8", "hostappstandin proxy: server ws-demo path / answered 200\n"},
		{"proxy deep path", "/proxy/server/ws-demo/a/b?x=1", 200, "text/plain; charset=utf-8", "hostappstandin proxy: server ws-demo path /a/b answered 200\n"},
		{"proxy unknown server", "/proxy/server/other/", 404, "text/plain; charset=utf-8", "server not found: other\n"},
		{"proxy without slash redirects", "/proxy/server/ws-demo", 301, "", ""},
		{"unknown path", "/nope", 404, "text/plain; charset=utf-8", "404 page not found\n"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got := get(t, c, s.URL()+tt.path)
			if got.code != tt.wantCode {
				t.Fatalf("code %d, want %d (body %q)", got.code, tt.wantCode, got.body)
			}
			if tt.wantType != "" && got.contentType != tt.wantType {
				t.Errorf("Content-Type %q, want %q", got.contentType, tt.wantType)
			}
			if tt.wantType == "application/json" {
				if got, want := mustCanon(t, got.body), mustCanon(t, tt.wantBody); got != want {
					t.Errorf("body %s\n want %s", got, want)
				}
				return
			}
			if tt.wantBody != "" && got.body != tt.wantBody {
				t.Errorf("body %q, want %q", got.body, tt.wantBody)
			}
		})
	}
}

func mustCanon(t *testing.T, s string) string {
	t.Helper()
	var v any
	if err := json.Unmarshal([]byte(s), &v); err != nil {
		t.Fatalf("%q is not JSON: %v", s, err)
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func TestKnobs(t *testing.T) {
	s := startServer(t, Options{Clusters: []Cluster{{ID: "c1", Name: "lab"}}})
	c := trustingClient(t, s.CAPEM())

	tests := []struct {
		name  string
		set   func()
		path  string
		code  int
		body  string // substring
		reset func()
	}{
		{"502 everywhere: healthz", func() { s.SetStatus(502) }, "/healthz", 502, "502 Bad Gateway", func() { s.SetStatus(0) }},
		{"502 everywhere: api", func() { s.SetStatus(502) }, "/api/health", 502, "Bad Gateway", func() { s.SetStatus(0) }},
		{"cluster error", func() { s.SetClusterStatus("c1", StatusError, "kube-apiserver unreachable") }, "/api/health",
			200, `"status":"error","code":503,"error":"kube-apiserver unreachable"`, func() { s.SetClusterStatus("c1", StatusOK, "") }},
		{"cluster error in its health", func() { s.SetClusterStatus("c1", StatusError, "down") }, "/api/cluster/c1/health",
			200, `{"k8s":{"ok":false},"rdb":{"ok":false,"error":"down"}}`, func() { s.SetClusterStatus("c1", StatusOK, "") }},
		{"database only", func() { s.SetClusterRDB("c1", false, "connection refused") }, "/api/cluster/c1/health",
			200, `{"k8s":{"ok":true},"rdb":{"ok":false,"error":"connection refused"}}`, func() { s.SetClusterRDB("c1", true, "") }},
		{"new cluster", func() { s.SetClusterStatus("c9", StatusUnknown, "") }, "/api/health", 200, `"id":"c9"`, func() {}},
		{"headscale down", func() { s.SetHeadscaleStatus(DefaultHeadscaleID, "error") }, "/api/health",
			200, `"headscale":[{"id":"headscale","status":"error"}]`, func() { s.SetHeadscaleStatus(DefaultHeadscaleID, StatusOK) }},
		{"proxy 504", func() { s.SetServer("ws-slow", 504) }, "/proxy/server/ws-slow/", 504, "answered 504", func() { s.SetServer("ws-slow", 0) }},
		{"proxy forgets", func() {}, "/proxy/server/ws-slow/", 404, "server not found", func() {}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			tt.set()
			defer tt.reset()
			got := get(t, c, s.URL()+tt.path)
			if got.code != tt.code || !strings.Contains(got.body, tt.body) {
				t.Fatalf("GET %s = %d %q, want %d containing %q", tt.path, got.code, got.body, tt.code, tt.body)
			}
		})
	}
	// Back to normal.
	if got := get(t, c, s.URL()+"/healthz"); got.code != 200 || got.body != "ok" {
		t.Fatalf("healthz after the knobs = %d %q", got.code, got.body)
	}
}

// TestProxyFromKube: with the API server's state, the proxy answers as
// GuildNet's does: 404 without a Running pod, 502 without the Service, and
// only in its own namespace.
func TestProxyFromKube(t *testing.T) {
	labels := func(ws string) map[string]string { return map[string]string{WorkspaceLabel: ws} }
	pod := func(ns, name, ws string, phase corev1.PodPhase) *corev1.Pod {
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels(ws)}, Status: corev1.PodStatus{Phase: phase}}
	}
	svc := func(ns, name string) *corev1.Service {
		return &corev1.Service{ObjectMeta: metav1.ObjectMeta{Namespace: ns, Name: name, Labels: labels(name)}}
	}
	kube := fake.NewClientset(
		pod("default", "demo-1", "demo", corev1.PodRunning), svc("default", "demo"),
		pod("default", "pending-1", "pending", corev1.PodPending), svc("default", "pending"),
		pod("default", "nosvc-1", "nosvc", corev1.PodRunning),
		pod("other", "elsewhere-1", "elsewhere", corev1.PodRunning), svc("other", "elsewhere"),
	)
	s := startServer(t, Options{Kube: kube})
	c := trustingClient(t, s.CAPEM())
	for _, tt := range []struct {
		id   string
		code int
		body string
	}{
		{"demo", 200, "server demo path / answered 200"},
		{"pending", 404, "404 page not found"},
		{"missing", 404, "404 page not found"},
		{"nosvc", 502, "service default/nosvc not found"},
		{"elsewhere", 404, "404 page not found"},
	} {
		got := get(t, c, s.URL()+"/proxy/server/"+tt.id+"/")
		if got.code != tt.code || !strings.Contains(got.body, tt.body) {
			t.Errorf("proxy %s = %d %q, want %d containing %q", tt.id, got.code, got.body, tt.code, tt.body)
		}
	}
	// A knob still wins over the API server's state.
	s.SetServer("nosvc", 200)
	if got := get(t, c, s.URL()+"/proxy/server/nosvc/"); got.code != 200 {
		t.Errorf("proxy nosvc after SetServer = %d %q", got.code, got.body)
	}
}

func TestLatency(t *testing.T) {
	s := startServer(t, Options{})
	c := trustingClient(t, s.CAPEM())
	for _, d := range []time.Duration{150 * time.Millisecond, 0} {
		s.SetLatency(d)
		start := time.Now()
		if got := get(t, c, s.URL()+"/healthz"); got.code != 200 {
			t.Fatalf("healthz = %d", got.code)
		}
		if took := time.Since(start); took < d {
			t.Errorf("latency %v: answered after %v", d, took)
		}
	}
	// A client that gives up before the latency gets its timeout.
	s.SetLatency(2 * time.Second)
	defer s.SetLatency(0)
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, s.URL()+"/healthz", nil)
	start := time.Now()
	if resp, err := c.Do(req); err == nil {
		resp.Body.Close()
		t.Fatal("request answered before the latency")
	}
	if took := time.Since(start); took > time.Second {
		t.Errorf("client timeout took %v", took)
	}
}

func TestTLS(t *testing.T) {
	s := startServer(t, Options{})
	other := startServer(t, Options{})

	path := filepath.Join(t.TempDir(), "ca.pem")
	if err := s.WriteCA(path); err != nil {
		t.Fatal(err)
	}
	written, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}

	tests := []struct {
		name    string
		caPEM   []byte
		base    string
		wantErr bool
	}{
		{"trusting the written CA", written, s.URL(), false},
		{"by localhost name", written, strings.Replace(s.URL(), "127.0.0.1", "localhost", 1), false},
		{"trusting another stand-in's CA", other.CAPEM(), s.URL(), true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := trustingClient(t, tt.caPEM)
			resp, err := c.Get(tt.base + "/healthz")
			if err == nil {
				resp.Body.Close()
			}
			if (err != nil) != tt.wantErr {
				t.Fatalf("err = %v, wantErr %v", err, tt.wantErr)
			}
			if err != nil && !strings.Contains(err.Error(), "certificate") {
				t.Errorf("error %q is not a certificate error", err)
			}
		})
	}
	// Plain HTTP is not served.
	u, _ := url.Parse(s.URL())
	u.Scheme = "http"
	resp, err := (&http.Client{Timeout: 5 * time.Second}).Get(u.String() + "/healthz")
	if err == nil {
		defer resp.Body.Close()
		if resp.StatusCode == 200 {
			t.Fatal("plain HTTP /healthz answered 200")
		}
	}
}

func TestStartRejects(t *testing.T) {
	tests := []struct {
		name string
		opts Options
	}{
		{"non-loopback", Options{Addr: "0.0.0.0:0"}},
		{"cluster without id", Options{Clusters: []Cluster{{Name: "x"}}}},
		{"bad status", Options{Clusters: []Cluster{{ID: "c", Status: "fine"}}}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if s, err := Start(tt.opts); err == nil {
				s.Close()
				t.Fatal("Start succeeded")
			}
		})
	}
}

// FuzzHandler sends arbitrary paths and methods through the handler: every
// request gets an answer, never a panic or a 5xx (the fault knobs are off).
func FuzzHandler(f *testing.F) {
	s := &Server{anyServer: true, servers: map[string]int{}, headscale: []Headscale{{ID: "h", Status: "ok"}},
		clusters: []*clusterState{{Cluster: Cluster{ID: "c1", Name: "lab", Status: "ok"}, rdbOK: true}}}
	h := s.handler()
	for _, seed := range []struct{ method, path string }{
		{"GET", "/healthz"}, {"GET", "/api/health"}, {"GET", "/api/cluster/c1/health"},
		{"GET", "/api/cluster/%2F/health"}, {"POST", "/proxy/server/x/y/z"}, {"GET", "/proxy/server/"},
		{"DELETE", "/api/health"}, {"GET", "/../../etc/passwd"},
	} {
		f.Add(seed.method, seed.path)
	}
	f.Fuzz(func(t *testing.T, method, path string) {
		u, err := url.Parse(path)
		if err != nil || !validMethod(method) {
			return
		}
		req := httptest.NewRequest(http.MethodGet, "/", nil)
		req.Method, req.URL, req.RequestURI = method, u, path
		rec := httptest.NewRecorder()
		h.ServeHTTP(rec, req)
		if rec.Code >= 500 {
			t.Fatalf("%s %q answered %d", method, path, rec.Code)
		}
	})
}

func validMethod(m string) bool {
	if m == "" {
		return false
	}
	for _, r := range m {
		if r < '!' || r > '~' {
			return false
		}
	}
	return true
}
