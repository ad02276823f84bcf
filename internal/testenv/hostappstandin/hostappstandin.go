// Package hostappstandin is a STAND-IN for the GuildNet host app, for tests
// only.
//
// Why it exists: the host app is GuildNet's own server, shipped as a
// container image alongside a Talos/Kubernetes cluster; no container image
// can be pulled and no Talos node run on the machines this project is built
// and tested on. What MetaGuildNet's checks need from it is its HTTP
// surface, which this package reproduces on a real TLS socket, so the
// checks' real HTTP clients (TLS verification against a CA file, timeouts,
// JSON decoding) are exercised end to end.
//
// What it implements, with the shapes of GuildNet's code:
//
//   - TLS only, with a self-signed certificate made at Start for
//     127.0.0.1, ::1 and localhost (CAPEM / WriteCA give it to clients).
//   - GET /healthz: 200 "ok" (text/plain).
//   - GET /api/health: {"headscale":[{"id","status"}],
//     "clusters":[{"id","name","status":"ok|error|unknown","code","error"}]}.
//   - GET /api/cluster/{id}/health: {"k8s":{"ok":..},"rdb":{"ok":..,"error":".."}};
//     404 for an unknown cluster.
//   - /proxy/server/{id}/...: 200 with a short text body for a known server
//     (any method), 404 for an unknown one. With Options.Servers empty every
//     id is known. With Options.Kube set it answers from the API server's
//     state as GuildNet's proxy does, in its own namespace only: 404 at once
//     when no Running pod (label guildnet.io/workspace=<id>) backs the
//     workspace (GuildNet falls back to a pod path that answers 404), 502
//     when the pod's Service <id> is gone, else 200.
//
// Fault knobs: SetStatus makes every endpoint answer one status (e.g. 502,
// as when the app behind a reverse proxy is down), SetLatency delays every
// answer, SetClusterStatus / SetClusterRDB / SetHeadscaleStatus change what
// the health endpoints report, SetServer changes what the proxy answers.
//
// It is not the host app: no UI, no workspace management, no real proxying,
// no WebSocket upgrades. It listens on 127.0.0.1 only (by default on a free
// port).
//
// Use:
//
//	app, err := hostappstandin.Start(hostappstandin.Options{
//		Clusters: []hostappstandin.Cluster{{ID: "c1", Name: "lab", Status: "ok"}},
//	})
//	if err != nil { ... }
//	defer app.Close()
//	_ = app.WriteCA(caFile) // then GET app.URL()+"/healthz" trusting caFile
package hostappstandin

import (
	"cmp"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/json"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"log"
	"math/big"
	"net"
	"net/http"
	"os"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"
)

// Limits and defaults, named in one place.
const (
	// DefaultAddr is where Start listens when Options.Addr is empty.
	DefaultAddr = "127.0.0.1:0"
	// DefaultHeadscaleID names the one Headscale entry of /api/health when
	// Options.Headscale is empty.
	DefaultHeadscaleID = "headscale"
	// MaxHeaderBytes bounds request headers.
	MaxHeaderBytes = 64 << 10
	// ReadHeaderTimeout bounds reading a request's headers.
	ReadHeaderTimeout = 5 * time.Second
	// certTTL is how long the self-signed certificate is valid.
	certTTL = 7 * 24 * time.Hour
)

// Cluster statuses as /api/health reports them.
const (
	StatusOK      = "ok"
	StatusError   = "error"
	StatusUnknown = "unknown"
)

// Cluster is one cluster the host app manages. Status is "ok" (default),
// "error" or "unknown".
type Cluster struct{ ID, Name, Status string }

// Headscale is one Headscale control server the host app reports.
type Headscale struct{ ID, Status string }

// Options configure a Server. The zero value is usable.
type Options struct {
	// Addr is the loopback host:port to listen on; default DefaultAddr.
	Addr string
	// Clusters are reported by /api/health and /api/cluster/{id}/health.
	Clusters []Cluster
	// Headscale entries of /api/health; default one, DefaultHeadscaleID, "ok".
	Headscale []Headscale
	// Servers are the ids /proxy/server/{id}/ knows (e.g. Workspace
	// names); empty means every id is known.
	Servers []string
	// Kube, when set, makes the proxy answer ids not named in Servers or
	// SetServer from the API server's pods and Services in KubeNamespace
	// (default "default"), as GuildNet's proxy does.
	Kube          kubernetes.Interface
	KubeNamespace string
}

// WorkspaceLabel is the label GuildNet puts on a Workspace's pods and
// Service.
const WorkspaceLabel = "guildnet.io/workspace"

// kubeLookupTimeout bounds the proxy's API server reads.
const kubeLookupTimeout = 5 * time.Second

// clusterState is what the stand-in reports for one cluster.
type clusterState struct {
	Cluster
	errText string
	rdbOK   bool
	rdbErr  string
}

// Server is a running host-app stand-in. Its methods are safe for
// concurrent use.
type Server struct {
	url   string
	caPEM []byte
	srv   *http.Server
	done  chan struct{}

	status  atomic.Int64 // 0 = normal
	latency atomic.Int64 // time.Duration

	mu        sync.Mutex
	clusters  []*clusterState
	headscale []Headscale
	anyServer bool
	servers   map[string]int // id -> status code the proxy answers
	kube      kubernetes.Interface
	kubeNS    string
}

// Start makes a self-signed certificate, listens on opts.Addr and serves
// until Close.
func Start(opts Options) (*Server, error) {
	if opts.Addr == "" {
		opts.Addr = DefaultAddr
	}
	if err := checkLoopback(opts.Addr); err != nil {
		return nil, err
	}
	cert, caPEM, err := selfSigned()
	if err != nil {
		return nil, err
	}
	s := &Server{
		caPEM:     caPEM,
		done:      make(chan struct{}),
		anyServer: len(opts.Servers) == 0 && opts.Kube == nil,
		servers:   map[string]int{},
		kube:      opts.Kube,
		kubeNS:    cmp.Or(opts.KubeNamespace, "default"),
	}
	for _, c := range opts.Clusters {
		if c.ID == "" {
			return nil, errors.New("hostappstandin: a cluster has no ID")
		}
		if c.Status == "" {
			c.Status = StatusOK
		}
		if !validStatus(c.Status) {
			return nil, fmt.Errorf("hostappstandin: cluster %s: status %q is not ok, error or unknown", c.ID, c.Status)
		}
		s.clusters = append(s.clusters, &clusterState{Cluster: c, rdbOK: c.Status == StatusOK})
	}
	s.headscale = slices.Clone(opts.Headscale)
	if len(s.headscale) == 0 {
		s.headscale = []Headscale{{ID: DefaultHeadscaleID, Status: StatusOK}}
	}
	for _, id := range opts.Servers {
		s.servers[id] = http.StatusOK
	}

	ln, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("hostappstandin: listening on %s: %w", opts.Addr, err)
	}
	s.url = "https://" + ln.Addr().String()
	s.srv = &http.Server{
		Handler:           s.handler(),
		ReadHeaderTimeout: ReadHeaderTimeout,
		MaxHeaderBytes:    MaxHeaderBytes,
		TLSConfig:         &tls.Config{MinVersion: tls.VersionTLS12, Certificates: []tls.Certificate{cert}},
		// Handshake failures of untrusting clients are expected in tests.
		ErrorLog: log.New(io.Discard, "", 0),
	}
	go func() {
		defer close(s.done)
		_ = s.srv.ServeTLS(ln, "", "")
	}()
	return s, nil
}

func validStatus(s string) bool { return s == StatusOK || s == StatusError || s == StatusUnknown }

func checkLoopback(addr string) error {
	host, _, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("hostappstandin: address %q: %w", addr, err)
	}
	if host == "localhost" {
		return nil
	}
	if ip := net.ParseIP(host); ip != nil && ip.IsLoopback() {
		return nil
	}
	return fmt.Errorf("hostappstandin: address %q is not a loopback address; the stand-in listens on loopback only", addr)
}

// selfSigned makes a self-signed ECDSA certificate for the loopback names,
// which is also the CA clients trust (as GuildNet's default self-signed
// certificate is).
func selfSigned() (tls.Certificate, []byte, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("hostappstandin: generating key: %w", err)
	}
	serial, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("hostappstandin: serial: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "guildnet host app stand-in", Organization: []string{"MetaGuildNet testenv"}},
		NotBefore:             now.Add(-time.Minute),
		NotAfter:              now.Add(certTTL),
		KeyUsage:              x509.KeyUsageDigitalSignature | x509.KeyUsageCertSign,
		ExtKeyUsage:           []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
		BasicConstraintsValid: true,
		IsCA:                  true,
		IPAddresses:           []net.IP{net.IPv4(127, 0, 0, 1), net.IPv6loopback},
		DNSNames:              []string{"localhost"},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("hostappstandin: creating certificate: %w", err)
	}
	certPEM := pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("hostappstandin: encoding key: %w", err)
	}
	cert, err := tls.X509KeyPair(certPEM, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: keyDER}))
	if err != nil {
		return tls.Certificate{}, nil, fmt.Errorf("hostappstandin: loading key pair: %w", err)
	}
	return cert, certPEM, nil
}

// URL is the base URL, https://127.0.0.1:PORT.
func (s *Server) URL() string { return s.url }

// CAPEM is the PEM certificate clients must trust.
func (s *Server) CAPEM() []byte { return slices.Clone(s.caPEM) }

// WriteCA writes CAPEM to path.
func (s *Server) WriteCA(path string) error {
	if err := os.WriteFile(path, s.caPEM, 0o644); err != nil {
		return fmt.Errorf("hostappstandin: writing CA: %w", err)
	}
	return nil
}

// SetStatus makes every endpoint answer code (e.g. 502) with its status
// text; 0 restores normal answers.
func (s *Server) SetStatus(code int) { s.status.Store(int64(code)) }

// SetLatency delays every answer by d (0 turns it off).
func (s *Server) SetLatency(d time.Duration) { s.latency.Store(int64(max(d, 0))) }

// SetClusterStatus sets what /api/health reports for cluster id (adding it
// if unknown): status is "ok", "error" or "unknown"; errText goes to its
// "error" field; its "code" is 200, 503 or 0 respectively (the stand-in's
// choice: GuildNet's own codes may differ, so checks should go by status). The cluster's own health follows: "ok" makes k8s and rdb
// ok, anything else makes both not ok with errText as the rdb error.
func (s *Server) SetClusterStatus(id, status, errText string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusterLocked(id)
	c.Status, c.errText = status, errText
	c.rdbOK, c.rdbErr = status == StatusOK, errText
}

// SetClusterRDB sets only the database part of cluster id's health (the
// Kubernetes part keeps following its status), e.g. a cluster that is up
// while its RethinkDB is not.
func (s *Server) SetClusterRDB(id string, ok bool, errText string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	c := s.clusterLocked(id)
	c.rdbOK, c.rdbErr = ok, errText
}

func (s *Server) clusterLocked(id string) *clusterState {
	for _, c := range s.clusters {
		if c.ID == id {
			return c
		}
	}
	c := &clusterState{Cluster: Cluster{ID: id, Name: id, Status: StatusOK}, rdbOK: true}
	s.clusters = append(s.clusters, c)
	return c
}

// SetHeadscaleStatus sets (or adds) the status of a Headscale entry.
func (s *Server) SetHeadscaleStatus(id, status string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range s.headscale {
		if s.headscale[i].ID == id {
			s.headscale[i].Status = status
			return
		}
	}
	s.headscale = append(s.headscale, Headscale{ID: id, Status: status})
}

// SetServer makes /proxy/server/{id}/ known, answering code (e.g. 200, or
// 504 for a Workspace whose readiness probe fails); code 0 forgets id.
// Calling it switches off the "every id is known" default.
func (s *Server) SetServer(id string, code int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.anyServer = false
	if code == 0 {
		delete(s.servers, id)
		return
	}
	s.servers[id] = code
}

// Close stops the server at once, closing open connections, and waits for
// it to end. It is safe to call more than once.
func (s *Server) Close() {
	_ = s.srv.Close()
	<-s.done
}

// handler is the host app's HTTP surface, behind the fault knobs.
func (s *Server) handler() http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc("GET /healthz", func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Content-Type", "text/plain; charset=utf-8")
		_, _ = w.Write([]byte("ok"))
	})
	mux.HandleFunc("GET /api/health", s.apiHealth)
	mux.HandleFunc("GET /api/cluster/{id}/health", s.clusterHealth)
	mux.HandleFunc("/proxy/server/{id}/{rest...}", s.proxy)
	mux.HandleFunc("/proxy/server/{id}", func(w http.ResponseWriter, r *http.Request) {
		http.Redirect(w, r, r.URL.Path+"/", http.StatusMovedPermanently)
	})
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if d := time.Duration(s.latency.Load()); d > 0 {
			t := time.NewTimer(d)
			select {
			case <-t.C:
			case <-r.Context().Done():
				t.Stop()
				return
			}
		}
		if code := int(s.status.Load()); code != 0 {
			http.Error(w, strconv.Itoa(code)+" "+http.StatusText(code), code)
			return
		}
		mux.ServeHTTP(w, r)
	})
}

type apiHealthJSON struct {
	Headscale []headscaleJSON `json:"headscale"`
	Clusters  []clusterJSON   `json:"clusters"`
}

type headscaleJSON struct {
	ID     string `json:"id"`
	Status string `json:"status"`
}

type clusterJSON struct {
	ID     string `json:"id"`
	Name   string `json:"name"`
	Status string `json:"status"`
	Code   int    `json:"code"`
	Error  string `json:"error"`
}

// statusCode is the "code" /api/health gives a cluster status.
func statusCode(status string) int {
	switch status {
	case StatusOK:
		return http.StatusOK
	case StatusError:
		return http.StatusServiceUnavailable
	}
	return 0
}

func (s *Server) apiHealth(w http.ResponseWriter, _ *http.Request) {
	s.mu.Lock()
	out := apiHealthJSON{Headscale: []headscaleJSON{}, Clusters: []clusterJSON{}}
	for _, h := range s.headscale {
		out.Headscale = append(out.Headscale, headscaleJSON(h))
	}
	for _, c := range s.clusters {
		out.Clusters = append(out.Clusters, clusterJSON{ID: c.ID, Name: c.Name, Status: c.Status, Code: statusCode(c.Status), Error: c.errText})
	}
	s.mu.Unlock()
	writeJSON(w, http.StatusOK, out)
}

type clusterHealthJSON struct {
	K8s struct {
		OK bool `json:"ok"`
	} `json:"k8s"`
	RDB struct {
		OK    bool   `json:"ok"`
		Error string `json:"error"`
	} `json:"rdb"`
}

func (s *Server) clusterHealth(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	var out *clusterHealthJSON
	for _, c := range s.clusters {
		if c.ID == id {
			out = &clusterHealthJSON{}
			out.K8s.OK = c.Status == StatusOK
			out.RDB.OK, out.RDB.Error = c.rdbOK, c.rdbErr
		}
	}
	s.mu.Unlock()
	if out == nil {
		writeJSON(w, http.StatusNotFound, map[string]string{"error": "cluster not found: " + id})
		return
	}
	writeJSON(w, http.StatusOK, out)
}

func (s *Server) proxy(w http.ResponseWriter, r *http.Request) {
	id := r.PathValue("id")
	s.mu.Lock()
	code, known := s.servers[id]
	if !known && s.anyServer {
		code, known = http.StatusOK, true
	}
	s.mu.Unlock()
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	if !known && s.kube != nil {
		var msg string
		code, msg = s.fromKube(r.Context(), id)
		if code != http.StatusOK {
			http.Error(w, msg, code)
			return
		}
		known = true
	}
	if !known {
		http.Error(w, "server not found: "+id, http.StatusNotFound)
		return
	}
	w.WriteHeader(code)
	fmt.Fprintf(w, "hostappstandin proxy: server %s path /%s answered %d\n", id, r.PathValue("rest"), code)
}

// fromKube is what GuildNet's proxy answers for workspace id, judged from
// the API server: 404 without a Running pod, 502 without its Service.
func (s *Server) fromKube(ctx context.Context, id string) (int, string) {
	ctx, cancel := context.WithTimeout(ctx, kubeLookupTimeout)
	defer cancel()
	pods, err := s.kube.CoreV1().Pods(s.kubeNS).List(ctx, metav1.ListOptions{LabelSelector: WorkspaceLabel + "=" + id})
	if err != nil {
		return http.StatusBadGateway, fmt.Sprintf("listing pods of workspace %s/%s: %v", s.kubeNS, id, err)
	}
	if !slices.ContainsFunc(pods.Items, func(p corev1.Pod) bool { return p.Status.Phase == corev1.PodRunning }) {
		return http.StatusNotFound, "404 page not found"
	}
	if _, err := s.kube.CoreV1().Services(s.kubeNS).Get(ctx, id, metav1.GetOptions{}); err != nil {
		if apierrors.IsNotFound(err) {
			return http.StatusBadGateway, fmt.Sprintf("proxy error: service %s/%s not found", s.kubeNS, id)
		}
		return http.StatusBadGateway, fmt.Sprintf("proxy error: reading service %s/%s: %v", s.kubeNS, id, err)
	}
	return http.StatusOK, ""
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		http.Error(w, err.Error(), http.StatusInternalServerError)
		return
	}
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	_, _ = w.Write(append(b, '\n'))
}
