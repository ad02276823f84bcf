package collect

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
)

// Logs tails and scans the configured log files and journald units. Memory
// is bounded: at most Limits.LogTailBytes are read from the end of each of
// at most Limits.LogFiles files (one buffer, reused), and only matching lines
// (capped) and a short tail are kept. Binary, non-regular and unreadable
// files are skipped with a note saying so.
//
// Metrics: log_sources_scanned, log_matches.
// Settings: METAGN_LOG_GLOBS (comma-separated globs, default
// /var/log/guildnet/*.log), METAGN_JOURNAL_UNITS (comma-separated, default
// tailscaled,kubelet,containerd; read only when journalctl exists and the
// journal is running).
type Logs struct{}

func (Logs) Name() string { return "logs" }

// DefaultLogGlobs is where GuildNet's components log.
const DefaultLogGlobs = "/var/log/guildnet/*.log"

func (Logs) Collect(ctx context.Context, env *Env) (Section, error) {
	var s Section
	var files []string
	for _, g := range env.list("METAGN_LOG_GLOBS", DefaultLogGlobs) {
		m, err := filepath.Glob(g)
		if err != nil {
			addNote(&s, env, "log glob %q: %v", g, err)
			continue
		}
		if len(m) == 0 {
			addNote(&s, env, "log glob %q: no files", g)
		}
		files = append(files, m...)
	}
	slices.Sort(files)
	files = slices.Compact(files)
	if len(files) > env.Limits.LogFiles {
		addNote(&s, env, "%d log files found: scanned the first %d only", len(files), env.Limits.LogFiles)
		files = files[:env.Limits.LogFiles]
	}

	var results []LogSource
	buf := make([]byte, env.Limits.LogTailBytes)
	for _, f := range files {
		if ctx.Err() != nil {
			addNote(&s, env, "log scan stopped: %v", ctx.Err())
			break
		}
		results = append(results, tailFile(f, env, buf))
	}
	for _, u := range journalUnits(env) {
		if ctx.Err() != nil {
			break
		}
		results = append(results, journal(ctx, env, u, buf))
	}

	matches := 0
	for _, r := range results {
		if r.Note != "" {
			addNote(&s, env, "%s: %s", r.Source, r.Note)
		}
		for _, m := range r.Matches {
			s.Lines = append(s.Lines, LogLine{Source: env.Redact.String(r.Source), Text: m})
		}
		matches += len(r.Matches) + r.Dropped
	}
	addMetric(&s, "log_sources_scanned", float64(len(results)))
	addMetric(&s, "log_matches", float64(matches))
	setData(&s, env, results)
	return s, nil
}

// journalUnits lists the units to read, or none when journald is absent.
func journalUnits(env *Env) []string {
	if _, ok := lookPath("journalctl"); !ok {
		return nil
	}
	if _, err := os.Stat("/run/systemd/journal"); err != nil {
		return nil
	}
	return env.list("METAGN_JOURNAL_UNITS", "tailscaled,kubelet,containerd")
}

// journal reads the last lines of one unit, bounded by buf's size.
func journal(ctx context.Context, env *Env, unit string, buf []byte) LogSource {
	r := LogSource{Source: "journal:" + unit}
	ctx, cancel := context.WithTimeout(ctx, env.Limits.CommandTimeout)
	defer cancel()
	path, _ := lookPath("journalctl")
	cmd := exec.CommandContext(ctx, path, "--no-pager", "--quiet", "-o", "cat", "-n", "500", "-u", unit)
	out, err := cmd.StdoutPipe()
	if err != nil {
		r.Note = "journalctl: " + err.Error()
		return r
	}
	if err := cmd.Start(); err != nil {
		r.Note = "journalctl: " + err.Error()
		return r
	}
	n, _ := io.ReadFull(bufio.NewReader(out), buf)
	io.Copy(io.Discard, out) // let it finish; the deadline bounds this
	if err := cmd.Wait(); err != nil && n == 0 {
		r.Note = "journalctl: " + err.Error()
		return r
	}
	r.ReadBytes, r.SizeBytes = int64(n), int64(n)
	if n == len(buf) {
		r.Note = fmt.Sprintf("journal output truncated to the first %d bytes", n)
	}
	if err := scanText(buf[:n], env, &r); err != nil {
		r.Note = strings.TrimPrefix(r.Note+"; binary content, skipped", "; ")
		r.Matches, r.Tail = nil, nil
	}
	return r
}
