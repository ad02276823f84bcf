// Package collect gathers what a node knows about its own health: system
// metrics, component health, a bounded scan of logs and the configuration
// state. Each source is one small [Collector] in its own file, listed once in
// [Default]. Everything a collector returns has already been redacted on the
// node: secrets never leave it.
//
//	env := collect.NewEnv("node-1", settings)
//	sections := collect.Run(ctx, env, collect.Default())
//
// Collectors allocate only while they run; nothing is held between runs.
package collect

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"regexp"
	"strings"
	"sync"
	"time"

	"github.com/guildnet/metaguildnet/diagnostics/redact"
	"github.com/guildnet/metaguildnet/messages"
)

// Collector gathers one section of a node's diagnostics.
type Collector interface {
	// Name names the section ("system", "components", "logs", "config").
	Name() string
	// Collect gathers the section. It must respect ctx, bound its memory
	// and redact everything it returns with env.Redact. An error means the
	// section could not be gathered at all; partial trouble goes in Notes.
	Collect(ctx context.Context, env *Env) (Section, error)
}

// Default lists the collectors a diagnose scan runs, in report order.
func Default() []Collector {
	return []Collector{System{}, Components{}, Logs{}, Config{}}
}

// Section and LogLine are the wire types (messages) a collector fills.
type (
	Section = messages.Section
	LogLine = messages.LogLine
)

// Limits bound what collectors read and return. Zero fields take defaults.
type Limits struct {
	LogTailBytes    int64         // read at most this many bytes from the end of each log (256 KiB)
	LogFiles        int           // scan at most this many files (16)
	LogMatches      int           // keep at most this many matching lines per source (20)
	LogTailLines    int           // keep this many last lines per source for the bundle (10)
	LineBytes       int           // truncate longer lines (512)
	TopProcesses    int           // list this many processes (5)
	DialTimeout     time.Duration // per TCP dial or HTTP probe (500 ms)
	CommandTimeout  time.Duration // per systemctl or journalctl call (700 ms)
	CPUSample       time.Duration // CPU usage window (100 ms)
	ConfigFileBytes int64         // largest config file read (1 MiB)
}

func (l Limits) withDefaults() Limits {
	def := func(v *int, d int) {
		if *v <= 0 {
			*v = d
		}
	}
	def(&l.LogFiles, 16)
	def(&l.LogMatches, 20)
	def(&l.LogTailLines, 10)
	def(&l.LineBytes, 512)
	def(&l.TopProcesses, 5)
	if l.LogTailBytes <= 0 {
		l.LogTailBytes = 256 << 10
	}
	if l.ConfigFileBytes <= 0 {
		l.ConfigFileBytes = 1 << 20
	}
	if l.DialTimeout <= 0 {
		l.DialTimeout = 500 * time.Millisecond
	}
	if l.CommandTimeout <= 0 {
		l.CommandTimeout = 700 * time.Millisecond
	}
	if l.CPUSample <= 0 {
		l.CPUSample = 100 * time.Millisecond
	}
	return l
}

// Env is what collectors may know about the node. Build it with NewEnv.
type Env struct {
	Node string
	// Settings are the agent's configuration by environment name
	// (METAGN_LOG_GLOBS, RETHINKDB_ADDR, KUBECONFIG, ...).
	Settings map[string]string
	// WorkDir holds .env and .env.local; Home holds .guildnet/.
	WorkDir, Home string
	// LogPatterns are the regexes log lines are scanned for (the rules'
	// log conditions). Only matching lines are returned.
	LogPatterns []*regexp.Regexp
	// Redact scrubs everything returned. NewEnv seeds it with the secret
	// settings and the secret values of .env, .env.local and config.json.
	Redact *redact.Redactor
	Limits Limits
	// ProcRoot is the host's /proc: setting METAGN_HOST_PROC (a container
	// mounts the host's at /host/proc), else /proc; tests may point it
	// elsewhere.
	ProcRoot string
	// Now is the clock for certificate expiry.
	Now func() time.Time
	// TailnetIPs are the node's tailnet addresses, for the certificate SAN
	// check; nil means read them from the interfaces.
	TailnetIPs []string
}

// NewEnv builds an Env for node from settings: working directory and home
// from the process (HOME in settings wins), default limits, and a redactor
// that already knows every secret value the node's configuration holds.
func NewEnv(node string, settings map[string]string) *Env {
	wd, _ := os.Getwd()
	home := settings["HOME"]
	if home == "" {
		home, _ = os.UserHomeDir()
	}
	e := &Env{Node: node, Settings: settings, WorkDir: wd, Home: home}
	e.Prepare()
	return e
}

// Prepare fills defaults and seeds the redactor with the node's secret
// values; call it after changing WorkDir, Home or Settings by hand.
func (e *Env) Prepare() {
	e.Limits = e.Limits.withDefaults()
	if e.ProcRoot == "" {
		e.ProcRoot = e.setting("METAGN_HOST_PROC", "/proc")
	}
	if e.Now == nil {
		e.Now = time.Now
	}
	if e.Redact == nil {
		e.Redact = redact.New()
	}
	e.Redact.AddSettings(e.Settings)
	e.Redact.Add(secretValues(e)...)
}

// setting returns a setting or def.
func (e *Env) setting(key, def string) string {
	if v := strings.TrimSpace(e.Settings[key]); v != "" {
		return v
	}
	return def
}

// list returns a comma-separated setting as a list.
func (e *Env) list(key, def string) []string {
	var out []string
	for _, s := range strings.Split(e.setting(key, def), ",") {
		if s = strings.TrimSpace(s); s != "" {
			out = append(out, s)
		}
	}
	return out
}

// Run runs the collectors concurrently and returns their sections in the
// order given. A collector that fails or panics yields a section with Error
// set; the others are unaffected.
func Run(ctx context.Context, env *Env, cs []Collector) []Section {
	if env.Redact == nil || env.Now == nil {
		env.Prepare()
	}
	out := make([]Section, len(cs))
	var wg sync.WaitGroup
	for i, c := range cs {
		wg.Go(func() {
			start := time.Now()
			s, err := runOne(ctx, env, c)
			s.Name = c.Name()
			s.DurationMS = time.Since(start).Milliseconds()
			if err != nil {
				s.Error = env.Redact.String(err.Error())
			}
			out[i] = s
		})
	}
	wg.Wait()
	return out
}

func runOne(ctx context.Context, env *Env, c Collector) (s Section, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("collector %s panicked: %v", c.Name(), p)
		}
	}()
	return c.Collect(ctx, env)
}

// setData encodes a collector's detail into the section.
func setData(s *Section, env *Env, v any) {
	b, err := json.Marshal(v)
	if err != nil {
		s.Notes = append(s.Notes, env.Redact.String("detail not encoded: "+err.Error()))
		return
	}
	s.Data = b
}

func addMetric(s *Section, name string, v float64) {
	if s.Metrics == nil {
		s.Metrics = make(map[string]float64)
	}
	s.Metrics[name] = v
}

func addNote(s *Section, env *Env, format string, a ...any) {
	s.Notes = append(s.Notes, env.Redact.String(fmt.Sprintf(format, a...)))
}

func boolMetric(b bool) float64 {
	if b {
		return 1
	}
	return 0
}

// isSecretKey is redact.IsSecretName, named here for the config readers.
func isSecretKey(name string) bool { return redact.IsSecretName(name) }
