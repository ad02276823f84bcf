package checks

// Custom checks: the extension point for checks of one's own. A YAML file (setting
// METAGN_CUSTOM_CHECKS) lists checks of five types, each with a layer name
// of its own choosing:
//
//	checks:
//	  - name: registry_up
//	    layer: registry            # any lower_snake_case name, or a built-in layer
//	    description: the image registry answers
//	    scope: node                # node (default) or cluster
//	    timeout: 3s                # default 5s, at most 2m
//	    depends_on: [tailnet_connected]
//	    type: http                 # http | tcp | dns | file | command
//	    url: https://10.0.0.5:5000/v2/
//	    expect_status: [200, 401]  # default: any status below 400
//	    expect_body: ""            # substring, optional
//	    insecure: false            # or ca: /path/to/ca.pem
//
//	type tcp:     address: host:port
//	type dns:     host: kubernetes.default; expect: [10.96.0.1] (optional)
//	type file:    path: /abs/path; exists: true; contains: text; max_age: 10m
//	type command: command: /abs/path; args: [..]; expect_exit: 0; expect_output: text
//
// A command runs only if its absolute path is in the agent's own allow-list
// (setting METAGN_ALLOWED_COMMANDS, comma-separated), without a shell, with
// a minimal environment, bounded output and the check's timeout. A bad
// entry is refused as "FILE:LINE: check "name": field: problem".

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"

	"gopkg.in/yaml.v3"

	"github.com/guildnet/metaguildnet/internal/config"
)

// Limits of custom check files.
const (
	MaxCustomChecksFileBytes = 1 << 20
	MaxCustomChecks          = 256
	maxCommandOutput         = 64 << 10
	maxCustomBody            = 1 << 20
	maxFieldBytes            = 4096
	maxListItemsCustom       = 64
)

// Custom check types.
const (
	CustomHTTP    = "http"
	CustomTCP     = "tcp"
	CustomDNS     = "dns"
	CustomFile    = "file"
	CustomCommand = "command"
)

// fields each type accepts beyond the common ones.
var customFields = map[string][]string{
	CustomHTTP:    {"url", "method", "expect_status", "expect_body", "insecure", "ca"},
	CustomTCP:     {"address"},
	CustomDNS:     {"host", "expect"},
	CustomFile:    {"path", "exists", "contains", "max_age"},
	CustomCommand: {"command", "args", "expect_exit", "expect_output"},
}

var commonFields = []string{"name", "layer", "description", "scope", "timeout", "depends_on", "type"}

// LoadCustomChecks reads and parses a custom check file.
func LoadCustomChecks(path string) ([]Check, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("custom checks: %w", err)
	}
	defer f.Close()
	data, err := io.ReadAll(io.LimitReader(f, MaxCustomChecksFileBytes+1))
	if err != nil {
		return nil, fmt.Errorf("custom checks: reading %s: %w", path, err)
	}
	if len(data) > MaxCustomChecksFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", path, MaxCustomChecksFileBytes)
	}
	return ParseCustomChecks(path, data)
}

// ParseCustomChecks parses a custom check file's content; filename names it
// in errors. It checks each entry on its own (fields, types, values);
// names against the built-in checks and dependencies are checked with the
// whole catalog by [ValidateChecks].
func ParseCustomChecks(filename string, data []byte) (checks []Check, err error) {
	defer func() {
		// yaml.v3 is not known to panic on v3.0.1, but input is untrusted.
		if p := recover(); p != nil {
			checks, err = nil, fmt.Errorf("%s: unparseable YAML (%v)", filename, p)
		}
	}()
	if len(data) > MaxCustomChecksFileBytes {
		return nil, fmt.Errorf("%s: larger than %d bytes", filename, MaxCustomChecksFileBytes)
	}
	var doc yaml.Node
	if err := yaml.Unmarshal(data, &doc); err != nil {
		return nil, fmt.Errorf("%s: %w", filename, err)
	}
	if doc.Kind == 0 || len(doc.Content) == 0 {
		return nil, nil // an empty file holds no checks
	}
	root := doc.Content[0]
	list := root
	if root.Kind == yaml.MappingNode {
		list = nil
		for i := 0; i+1 < len(root.Content); i += 2 {
			k := root.Content[i]
			if k.Kind == yaml.ScalarNode && k.Value == "checks" {
				list = root.Content[i+1]
				continue
			}
			return nil, fmt.Errorf("%s:%d: unknown top-level field %q (want checks)", filename, k.Line, k.Value)
		}
		if list == nil {
			return nil, fmt.Errorf("%s:%d: no checks field", filename, root.Line)
		}
	}
	if list.Kind == yaml.ScalarNode && list.Tag == "!!null" {
		return nil, nil
	}
	if list.Kind != yaml.SequenceNode {
		return nil, fmt.Errorf("%s:%d: checks: want a list of checks", filename, list.Line)
	}
	if len(list.Content) > MaxCustomChecks {
		return nil, fmt.Errorf("%s:%d: %d checks, at most %d", filename, list.Line, len(list.Content), MaxCustomChecks)
	}
	seen := map[string]int{}
	for _, entry := range list.Content {
		c, err := parseCustomCheck(filename, entry)
		if err != nil {
			return nil, err
		}
		if line, dup := seen[c.Name]; dup {
			return nil, fmt.Errorf("%s:%d: check %q: name: defined twice (also line %d)", filename, entry.Line, c.Name, line)
		}
		seen[c.Name] = entry.Line
		checks = append(checks, c)
	}
	return checks, nil
}

// entryParser reads one entry's fields, remembering the first problem.
type entryParser struct {
	file   string
	entry  *yaml.Node
	name   string
	fields map[string]*yaml.Node
}

func (p *entryParser) errf(n *yaml.Node, field, format string, a ...any) error {
	line := p.entry.Line
	if n != nil {
		line = n.Line
	}
	return fmt.Errorf("%s:%d: check %q: %s: %s", p.file, line, p.name, field, fmt.Sprintf(format, a...))
}

func (p *entryParser) str(field string, required bool) (string, error) {
	n, ok := p.fields[field]
	if !ok {
		if required {
			return "", p.errf(nil, field, "missing")
		}
		return "", nil
	}
	if n.Kind != yaml.ScalarNode || n.Tag == "!!null" {
		return "", p.errf(n, field, "want a string")
	}
	if len(n.Value) > maxFieldBytes {
		return "", p.errf(n, field, "longer than %d bytes", maxFieldBytes)
	}
	if required && n.Value == "" {
		return "", p.errf(n, field, "empty")
	}
	return n.Value, nil
}

func (p *entryParser) boolean(field string, def bool) (bool, error) {
	n, ok := p.fields[field]
	if !ok {
		return def, nil
	}
	var v bool
	if n.Kind != yaml.ScalarNode || n.Decode(&v) != nil {
		return false, p.errf(n, field, "want true or false")
	}
	return v, nil
}

func (p *entryParser) integer(field string, def, lo, hi int) (int, error) {
	n, ok := p.fields[field]
	if !ok {
		return def, nil
	}
	var v int
	if n.Kind != yaml.ScalarNode || n.Decode(&v) != nil || v < lo || v > hi {
		return 0, p.errf(n, field, "want an integer between %d and %d", lo, hi)
	}
	return v, nil
}

func (p *entryParser) duration(field string, def, max time.Duration) (time.Duration, error) {
	n, ok := p.fields[field]
	if !ok {
		return def, nil
	}
	if n.Kind != yaml.ScalarNode {
		return 0, p.errf(n, field, "want a duration such as 5s")
	}
	d, err := time.ParseDuration(n.Value)
	if err != nil || d <= 0 || d > max {
		return 0, p.errf(n, field, "%q is not a duration between 0 and %s", Truncate(n.Value, 40), max)
	}
	return d, nil
}

// list reads a list of strings; a single scalar is a list of one.
func (p *entryParser) list(field string) ([]string, error) {
	n, ok := p.fields[field]
	if !ok {
		return nil, nil
	}
	items := []*yaml.Node{n}
	if n.Kind == yaml.SequenceNode {
		items = n.Content
	}
	if len(items) > maxListItemsCustom {
		return nil, p.errf(n, field, "more than %d items", maxListItemsCustom)
	}
	out := make([]string, 0, len(items))
	for _, it := range items {
		if it.Kind != yaml.ScalarNode || it.Tag == "!!null" {
			return nil, p.errf(it, field, "want a string or a list of strings")
		}
		if len(it.Value) > maxFieldBytes {
			return nil, p.errf(it, field, "item longer than %d bytes", maxFieldBytes)
		}
		out = append(out, it.Value)
	}
	return out, nil
}

func parseCustomCheck(file string, entry *yaml.Node) (Check, error) {
	p := &entryParser{file: file, entry: entry, fields: map[string]*yaml.Node{}}
	if entry.Kind != yaml.MappingNode {
		return Check{}, fmt.Errorf("%s:%d: check entry: want a mapping of fields", file, entry.Line)
	}
	// The name first, so every later error names the check.
	for i := 0; i+1 < len(entry.Content); i += 2 {
		if k, v := entry.Content[i], entry.Content[i+1]; k.Value == "name" && v.Kind == yaml.ScalarNode {
			p.name = Truncate(v.Value, 80)
		}
	}
	for i := 0; i+1 < len(entry.Content); i += 2 {
		k, v := entry.Content[i], entry.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			return Check{}, p.errf(k, "field", "want a field name")
		}
		if _, dup := p.fields[k.Value]; dup {
			return Check{}, p.errf(k, Truncate(k.Value, 40), "given twice")
		}
		p.fields[k.Value] = v
	}
	c := Check{Source: fmt.Sprintf("%s:%d", file, entry.Line)}
	var err error
	if c.Name, err = p.str("name", true); err != nil {
		return Check{}, err
	}
	if !ValidName(c.Name) {
		return Check{}, p.errf(p.fields["name"], "name", "want lower_snake_case, 1 to 63 characters")
	}
	if c.Layer, err = p.str("layer", true); err != nil {
		return Check{}, err
	}
	if !ValidName(c.Layer) {
		return Check{}, p.errf(p.fields["layer"], "layer", "%q is not lower_snake_case, 1 to 63 characters", Truncate(c.Layer, 40))
	}
	if c.Description, err = p.str("description", false); err != nil {
		return Check{}, err
	}
	scope, err := p.str("scope", false)
	if err != nil {
		return Check{}, err
	}
	switch Scope(scope) {
	case "", ScopeNode:
		c.Scope = ScopeNode
	case ScopeCluster:
		c.Scope = ScopeCluster
	default:
		return Check{}, p.errf(p.fields["scope"], "scope", "%q is neither node nor cluster", Truncate(scope, 40))
	}
	if c.Timeout, err = p.duration("timeout", DefaultCheckTimeout, MaxCheckTimeout); err != nil {
		return Check{}, err
	}
	if c.DependsOn, err = p.list("depends_on"); err != nil {
		return Check{}, err
	}
	for _, d := range c.DependsOn {
		if !ValidName(d) {
			return Check{}, p.errf(p.fields["depends_on"], "depends_on", "%q is not a check name", Truncate(d, 40))
		}
	}
	typ, err := p.str("type", true)
	if err != nil {
		return Check{}, err
	}
	allowed, ok := customFields[typ]
	if !ok {
		return Check{}, p.errf(p.fields["type"], "type", "%q is not one of http, tcp, dns, file, command", Truncate(typ, 40))
	}
	// Unknown fields, reported in file order.
	for i := 0; i+1 < len(entry.Content); i += 2 {
		k := entry.Content[i]
		if !slices.Contains(commonFields, k.Value) && !slices.Contains(allowed, k.Value) {
			return Check{}, p.errf(k, Truncate(k.Value, 40), "not a field of a %s check", typ)
		}
	}
	switch typ {
	case CustomHTTP:
		c.Run, err = parseHTTPCheck(p)
	case CustomTCP:
		c.Run, err = parseTCPCheck(p)
	case CustomDNS:
		c.Run, err = parseDNSCheck(p)
	case CustomFile:
		c.Run, err = parseFileCheck(p)
	case CustomCommand:
		c.Run, err = parseCommandCheck(p)
	}
	if err != nil {
		return Check{}, err
	}
	if c.Description == "" {
		c.Description = "custom " + typ + " check"
	}
	return c, nil
}

// --- http ---

func parseHTTPCheck(p *entryParser) (func(context.Context, *CheckEnv) Result, error) {
	raw, err := p.str("url", true)
	if err != nil {
		return nil, err
	}
	u, err := url.Parse(raw)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, p.errf(p.fields["url"], "url", "%q is not an http or https URL", Truncate(raw, 80))
	}
	method, err := p.str("method", false)
	if err != nil {
		return nil, err
	}
	switch method {
	case "":
		method = http.MethodGet
	case http.MethodGet, http.MethodHead:
	default:
		return nil, p.errf(p.fields["method"], "method", "%q: only GET and HEAD", Truncate(method, 20))
	}
	var statuses []int
	if n, ok := p.fields["expect_status"]; ok {
		items := []*yaml.Node{n}
		if n.Kind == yaml.SequenceNode {
			items = n.Content
		}
		if len(items) == 0 || len(items) > maxListItemsCustom {
			return nil, p.errf(n, "expect_status", "want 1 to %d status codes", maxListItemsCustom)
		}
		for _, it := range items {
			var v int
			if it.Kind != yaml.ScalarNode || it.Decode(&v) != nil || v < 100 || v > 599 {
				return nil, p.errf(it, "expect_status", "want HTTP status codes (100-599)")
			}
			statuses = append(statuses, v)
		}
	}
	body, err := p.str("expect_body", false)
	if err != nil {
		return nil, err
	}
	insecure, err := p.boolean("insecure", false)
	if err != nil {
		return nil, err
	}
	ca, err := p.str("ca", false)
	if err != nil {
		return nil, err
	}
	if ca != "" && !filepath.IsAbs(ca) {
		return nil, p.errf(p.fields["ca"], "ca", "want an absolute path")
	}
	return func(ctx context.Context, cx *CheckEnv) Result {
		tc, err := clientTLS(ca, insecure, "ca")
		if err != nil {
			return Fail("%v", err)
		}
		tr := &http.Transport{TLSClientConfig: tc, Proxy: nil, DisableKeepAlives: true}
		defer tr.CloseIdleConnections()
		client := answerClient(tr)
		req, err := http.NewRequestWithContext(ctx, method, raw, nil)
		if err != nil {
			return Fail("%s %s: %v", method, raw, err)
		}
		start := time.Now()
		resp, err := client.Do(req)
		if err != nil {
			return Fail("%s %s: %s", method, raw, errText(ctx, err))
		}
		defer resp.Body.Close()
		took := time.Since(start)
		obs := map[string]any{"url": raw, "status": resp.StatusCode, "latency_ms": ms(took)}
		thr := map[string]any{}
		if statuses != nil {
			thr["status"] = statuses
		} else {
			thr["status"] = "< 400"
		}
		ok := resp.StatusCode < 400
		if statuses != nil {
			ok = slices.Contains(statuses, resp.StatusCode)
		}
		if !ok {
			return Fail("%s %s answered %d %s", method, raw, resp.StatusCode, http.StatusText(resp.StatusCode)).With(obs, thr)
		}
		if body != "" {
			thr["body_contains"] = body
			b, err := io.ReadAll(io.LimitReader(resp.Body, maxCustomBody))
			if err != nil {
				return Fail("%s %s: reading the body: %s", method, raw, errText(ctx, err)).With(obs, thr)
			}
			if !bytes.Contains(b, []byte(body)) {
				return Fail("%s %s answered %d without %q in its body", method, raw, resp.StatusCode, Truncate(body, 80)).With(obs, thr)
			}
		}
		return Pass("%s %s answered %d in %s", method, raw, resp.StatusCode, took.Round(time.Millisecond)).With(obs, thr)
	}, nil
}

// --- tcp ---

func parseTCPCheck(p *entryParser) (func(context.Context, *CheckEnv) Result, error) {
	addr, err := p.str("address", true)
	if err != nil {
		return nil, err
	}
	host, port, err := net.SplitHostPort(addr)
	if n, perr := strconv.Atoi(port); err != nil || host == "" || perr != nil || n <= 0 || n > 65535 {
		return nil, p.errf(p.fields["address"], "address", "%q is not host:port", Truncate(addr, 80))
	}
	return func(ctx context.Context, cx *CheckEnv) Result {
		return dialTCP(ctx, addr, addr)
	}, nil
}

// --- dns ---

func parseDNSCheck(p *entryParser) (func(context.Context, *CheckEnv) Result, error) {
	name, err := p.str("host", true)
	if err != nil {
		return nil, err
	}
	expect, err := p.list("expect")
	if err != nil {
		return nil, err
	}
	for _, e := range expect {
		if _, err := netip.ParseAddr(e); err != nil {
			return nil, p.errf(p.fields["expect"], "expect", "%q is not an IP address", Truncate(e, 60))
		}
	}
	return func(ctx context.Context, cx *CheckEnv) Result {
		start := time.Now()
		addrs, err := net.DefaultResolver.LookupHost(ctx, name)
		took := time.Since(start)
		if err != nil {
			return Fail("cannot resolve %q: %s", name, errText(ctx, err))
		}
		obs := map[string]any{"name": name, "addresses": addrs, "latency_ms": ms(took)}
		var missing []string
		for _, e := range expect {
			want, _ := netip.ParseAddr(e)
			found := false
			for _, a := range addrs {
				if got, err := netip.ParseAddr(a); err == nil && got == want {
					found = true
				}
			}
			if !found {
				missing = append(missing, e)
			}
		}
		if len(missing) > 0 {
			return Fail("%s resolves to %s, missing %s", name, strings.Join(addrs, ", "), strings.Join(missing, ", ")).With(obs, map[string]any{"expect": expect})
		}
		return Pass("%s resolves to %s", name, strings.Join(addrs, ", ")).With(obs, nil)
	}, nil
}

// --- file ---

func parseFileCheck(p *entryParser) (func(context.Context, *CheckEnv) Result, error) {
	path, err := p.str("path", true)
	if err != nil {
		return nil, err
	}
	if !filepath.IsAbs(path) {
		return nil, p.errf(p.fields["path"], "path", "want an absolute path, got %q", Truncate(path, 80))
	}
	exists, err := p.boolean("exists", true)
	if err != nil {
		return nil, err
	}
	contains, err := p.str("contains", false)
	if err != nil {
		return nil, err
	}
	maxAge, err := p.duration("max_age", 0, 100*365*24*time.Hour)
	if err != nil {
		return nil, err
	}
	if !exists && (contains != "" || maxAge > 0) {
		return nil, p.errf(p.fields["exists"], "exists", "false cannot go with contains or max_age")
	}
	return func(ctx context.Context, cx *CheckEnv) Result {
		st, err := os.Stat(path)
		switch {
		case !exists && errors.Is(err, os.ErrNotExist):
			return Pass("%s does not exist, as expected", path)
		case !exists && err == nil:
			return Fail("%s exists and should not", path)
		case err != nil:
			return Fail("%v", err)
		}
		obs := map[string]any{"path": path, "size": st.Size(), "modified": st.ModTime().UTC()}
		if maxAge > 0 {
			age := time.Since(st.ModTime())
			if age > maxAge {
				return Fail("%s last changed %s ago, more than %s", path, age.Round(time.Second), maxAge).With(obs, map[string]any{"max_age": maxAge.String()})
			}
		}
		if contains != "" {
			f, err := os.Open(path)
			if err != nil {
				return Fail("%v", err)
			}
			defer f.Close()
			b, err := io.ReadAll(io.LimitReader(f, maxCustomBody))
			if err != nil {
				return Fail("reading %s: %v", path, err)
			}
			if !bytes.Contains(b, []byte(contains)) {
				return Fail("%s does not contain %q", path, Truncate(contains, 80)).With(obs, map[string]any{"contains": contains})
			}
		}
		return Pass("%s present", path).With(obs, nil)
	}, nil
}

// --- command ---

// commandEnv is the whole environment a custom command gets: nothing of the
// agent's own (which may hold keys).
var commandEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C"}

// AllowedCommands returns the agent's allow-list of commands (setting
// METAGN_ALLOWED_COMMANDS), cleaned absolute paths only.
func AllowedCommands(s config.Settings) []string {
	var out []string
	for item := range strings.SplitSeq(s.Get("METAGN_ALLOWED_COMMANDS", ""), ",") {
		if item = strings.TrimSpace(item); filepath.IsAbs(item) {
			out = append(out, filepath.Clean(item))
		}
	}
	return out
}

func parseCommandCheck(p *entryParser) (func(context.Context, *CheckEnv) Result, error) {
	command, err := p.str("command", true)
	if err != nil {
		return nil, err
	}
	if !filepath.IsAbs(command) || filepath.Clean(command) != command {
		return nil, p.errf(p.fields["command"], "command", "want a clean absolute path, got %q", Truncate(command, 80))
	}
	args, err := p.list("args")
	if err != nil {
		return nil, err
	}
	wantExit, err := p.integer("expect_exit", 0, 0, 255)
	if err != nil {
		return nil, err
	}
	wantOut, err := p.str("expect_output", false)
	if err != nil {
		return nil, err
	}
	return func(ctx context.Context, cx *CheckEnv) Result {
		if !slices.Contains(AllowedCommands(cx.Settings), command) {
			return Fail("refused: %s is not in the agent's allow-list (METAGN_ALLOWED_COMMANDS)", command)
		}
		return runCommand(ctx, command, args, wantExit, wantOut)
	}, nil
}

// limitedBuffer keeps the first max bytes written and counts the rest.
type limitedBuffer struct {
	buf     bytes.Buffer
	max     int
	dropped int
}

func (b *limitedBuffer) Write(p []byte) (int, error) {
	room := b.max - b.buf.Len()
	if room >= len(p) {
		return b.buf.Write(p)
	}
	if room > 0 {
		b.buf.Write(p[:room])
	}
	b.dropped += len(p) - max(room, 0)
	return len(p), nil
}

func runCommand(ctx context.Context, command string, args []string, wantExit int, wantOut string) Result {
	cmd := exec.CommandContext(ctx, command, args...)
	cmd.Env = commandEnv
	cmd.Dir = "/"
	var out limitedBuffer
	out.max = maxCommandOutput
	cmd.Stdout, cmd.Stderr = &out, &out
	// Its own process group, so a timeout kills what it started too.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	cmd.WaitDelay = 500 * time.Millisecond
	start := time.Now()
	err := cmd.Run()
	took := time.Since(start)
	exit := -1
	if cmd.ProcessState != nil {
		exit = cmd.ProcessState.ExitCode()
	}
	output := out.buf.String()
	obs := map[string]any{"command": command, "exit": exit, "duration_ms": ms(took), "output": Truncate(output, 512)}
	thr := map[string]any{"exit": wantExit}
	if wantOut != "" {
		thr["output_contains"] = wantOut
	}
	var ee *exec.ExitError
	switch {
	case ctx.Err() != nil:
		return Fail("%s did not finish after %s: %v", command, took.Round(time.Millisecond), context.Cause(ctx)).With(obs, thr)
	case err != nil && !errors.As(err, &ee):
		return Fail("running %s: %v", command, err).With(obs, thr)
	case exit != wantExit:
		return Fail("%s exited %d, want %d: %s", command, exit, wantExit, firstLine([]byte(output))).With(obs, thr)
	case wantOut != "" && !strings.Contains(output, wantOut):
		return Fail("%s output lacks %q: %s", command, Truncate(wantOut, 80), firstLine([]byte(output))).With(obs, thr)
	}
	return Pass("%s exited %d in %s", command, exit, took.Round(time.Millisecond)).With(obs, thr)
}
