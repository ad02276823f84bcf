// Package dashboard is the controller's web dashboard: server-rendered
// pages (Go templates and a little JS/CSS, all embedded; nothing is fetched
// at run time) over the controller's own state, live through server-sent
// events.
//
// The controller implements [Source] and mounts [Server] on its --http
// address; it calls [Server.Notify] whenever its state changes (a node's
// liveness, a stored report), and every open page fetches a fresh copy of
// its live part within a fraction of a second. Pages:
//
//	/                 fleet: clusters × layers, node counts, open findings, setup runs, rollouts, nodes (paged)
//	/cluster?name=C   a cluster's nodes × layers, its 24 h timeline per layer, check durations
//	/node?name=N      facts, tailnet path, last result of every check, "diagnose now", recent tasks
//	/runs             setup runs and rollouts
//	/events           the SSE stream ("hello" on every connect, "change" after a change)
//
// Reading is open on loopback; acting (diagnose now) needs an operator
// session, opened with a one-time link from `controller dashboard login`
// (auth.go), and a CSRF token on every action.
package dashboard

import (
	"context"
	"embed"
	"encoding/json"
	"errors"
	"html/template"
	"io/fs"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

//go:embed templates/*.html
var templateFS embed.FS

//go:embed static
var staticFS embed.FS

// Source is what the dashboard reads: the controller's own state.
type Source interface {
	// Fleet is the fleet view: every node (sorted by cluster, then name)
	// with its last per-layer statuses, and a line for every cluster.
	Fleet(now time.Time) messages.StatusReply
	// LastChecks are the newest check results that cover cluster (node
	// checks of its nodes and its cluster checks).
	LastChecks(cluster string) []messages.CheckResult
	// Findings are the open findings: the diagnostic rules applied to the
	// last checks of every cluster.
	Findings() []messages.Finding
	// Reports lists the stored verification reports made since since,
	// oldest first; Report reads one.
	Reports(ctx context.Context, since time.Time) ([]ReportRef, error)
	Report(ctx context.Context, id string) (messages.Report, error)
	// Diagnose runs a diagnosis of one node now and returns its result.
	Diagnose(ctx context.Context, node string) (messages.DiagnoseResult, error)
	// NodeTasks are node's most recent tasks (newest first, at most max),
	// each with node's row only.
	NodeTasks(ctx context.Context, node string, max int) ([]messages.TaskReport, error)
	// SetupRuns and Rollouts are the setup runs and rollouts the
	// controller knows, newest first.
	SetupRuns(ctx context.Context) ([]messages.SetupRun, error)
	Rollouts(ctx context.Context) ([]Rollout, error)
}

// ReportRef names a stored report and when it was made.
type ReportRef struct {
	ID   string
	Time time.Time
}

// Rollout is a rollout as the dashboard shows it: batches of nodes, the
// gate between them, and why it stopped.
type Rollout struct {
	ID         string         `json:"id"`
	Status     string         `json:"status"`
	StartedAt  time.Time      `json:"started_at"`
	Batches    []RolloutBatch `json:"batches"`
	StopReason string         `json:"stop_reason,omitempty"`
}

// RolloutBatch is one batch of a rollout.
type RolloutBatch struct {
	Nodes  []string `json:"nodes"`
	Status string   `json:"status"`
	Gate   string   `json:"gate,omitempty"` // the gate's result
}

// Options configure a dashboard.
type Options struct {
	Source Source
	// RequireSignIn makes reading need a session too (any address but
	// loopback).
	RequireSignIn bool
	// Secure marks cookies Secure (served over TLS).
	Secure bool
	// SessionTTL is how long a session lasts (default 12h).
	SessionTTL time.Duration
	// PageSize is the rows of a paged list (default 100).
	PageSize int
	// MaxStreams bounds the open event streams (default 256).
	MaxStreams int
	// Coalesce is how long changes are gathered into one "change" event
	// (default 200ms).
	Coalesce time.Duration
	Log      *zap.Logger
}

// Server serves the dashboard. Create it with New.
type Server struct {
	o     Options
	src   Source
	log   *zap.Logger
	tmpl  *template.Template
	mux   *http.ServeMux
	auth  *auth
	hub   *hub
	hist  *history
	boot  string
	diag  chan struct{} // one diagnosis at a time
	close sync.Once
}

// New makes a dashboard over o.Source.
func New(o Options) (*Server, error) {
	if o.Source == nil {
		return nil, errors.New("dashboard: no source")
	}
	if o.SessionTTL <= 0 {
		o.SessionTTL = 12 * time.Hour
	}
	if o.PageSize <= 0 {
		o.PageSize = 100
	}
	if o.MaxStreams <= 0 {
		o.MaxStreams = 256
	}
	if o.Coalesce <= 0 {
		o.Coalesce = 200 * time.Millisecond
	}
	if o.Log == nil {
		o.Log = zap.NewNop()
	}
	t, err := newTemplates()
	if err != nil {
		return nil, err
	}
	s := &Server{o: o, src: o.Source, log: o.Log, tmpl: t, auth: newAuth(o.SessionTTL), hub: newHub(o.Coalesce, o.MaxStreams),
		hist: newHistory(), boot: randomToken()[:12], diag: make(chan struct{}, 1)}
	static, _ := fs.Sub(staticFS, "static")
	m := http.NewServeMux()
	m.Handle("GET /static/", http.StripPrefix("/static/", http.FileServerFS(static)))
	m.HandleFunc("GET /{$}", s.read(s.fleetPage))
	m.HandleFunc("GET /cluster", s.read(s.clusterPage))
	m.HandleFunc("GET /node", s.read(s.nodePage))
	m.HandleFunc("GET /runs", s.read(s.runsPage))
	m.HandleFunc("GET /events", s.events)
	m.HandleFunc("GET /login", s.loginPage)
	m.HandleFunc("POST /login", s.loginPost)
	m.HandleFunc("POST /logout", s.act(s.logout))
	m.HandleFunc("POST /node/diagnose", s.act(s.diagnose))
	s.mux = m
	return s, nil
}

func newTemplates() (*template.Template, error) {
	return template.New("").Funcs(funcs).ParseFS(templateFS, "templates/*.html")
}

// ServeHTTP serves the dashboard's pages, static files and events.
func (s *Server) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	h := w.Header()
	h.Set("Content-Security-Policy", "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'")
	h.Set("X-Content-Type-Options", "nosniff")
	h.Set("Referrer-Policy", "no-referrer") // a sign-in link never travels on in a Referer
	h.Set("X-Frame-Options", "DENY")
	s.mux.ServeHTTP(w, r)
}

// Notify tells open pages that kind of state changed; changes within the
// coalescing interval make one event. Kind "report" means a verification
// report was stored (the cluster pages' history reads it).
func (s *Server) Notify(kind string) {
	if kind == "report" {
		s.hist.reportStored()
	}
	s.hub.notify(kind)
}

// NewLogin makes a one-time sign-in token valid for ttl; only its hash is
// kept. The link is /login?token=TOKEN on the dashboard's address.
func (s *Server) NewLogin(ttl time.Duration) (string, time.Time) {
	return s.auth.newLogin(ttl, time.Now())
}

// Close ends every open event stream (so the HTTP server can shut down).
func (s *Server) Close() { s.close.Do(s.hub.close) }

// read wraps a page handler: with RequireSignIn, no session means the
// sign-in page.
func (s *Server) read(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		sess := s.auth.session(r, time.Now())
		if s.o.RequireSignIn && sess == nil {
			http.Redirect(w, r, "/login", http.StatusSeeOther)
			return
		}
		h(w, r, sess)
	}
}

// act wraps an action: it needs a session and that session's CSRF token
// (form field csrf or header X-CSRF-Token); without either, 403.
func (s *Server) act(h func(http.ResponseWriter, *http.Request, *session)) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		r.Body = http.MaxBytesReader(w, r.Body, 64<<10)
		sess := s.auth.session(r, time.Now())
		if sess == nil {
			s.forbidden(w, r, "sign in first: run `controller dashboard login` and open the link it prints")
			return
		}
		tok := r.Header.Get("X-CSRF-Token")
		if tok == "" {
			tok = r.PostFormValue("csrf")
		}
		if !sess.csrfOK(tok) {
			s.forbidden(w, r, "missing or wrong CSRF token: reload the page and try again")
			return
		}
		h(w, r, sess)
	}
}

func (s *Server) forbidden(w http.ResponseWriter, r *http.Request, why string) {
	w.Header().Set("Cache-Control", "no-store")
	w.Header().Set("Content-Type", "text/plain; charset=utf-8")
	w.WriteHeader(http.StatusForbidden)
	w.Write([]byte("403 forbidden: " + why + "\n"))
}

// requestCtx bounds a page's reads of stored state.
func requestCtx(r *http.Request, d time.Duration) (context.Context, context.CancelFunc) {
	return context.WithTimeout(r.Context(), d)
}

func writeJSON(w http.ResponseWriter, v any) {
	w.Header().Set("Content-Type", "application/json")
	json.NewEncoder(w).Encode(v)
}
