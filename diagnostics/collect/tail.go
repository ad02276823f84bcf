package collect

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"unicode/utf8"
)

// LogSource is what a bounded scan of one log file or journald unit found;
// the logs section's Data is a []LogSource.
type LogSource struct {
	Source    string   `json:"source"`
	SizeBytes int64    `json:"size_bytes"`
	ReadBytes int64    `json:"read_bytes"`
	Lines     int      `json:"lines_scanned"`
	Matches   []string `json:"matches,omitempty"`
	Dropped   int      `json:"matches_dropped,omitempty"`
	Tail      []string `json:"tail,omitempty"`
	Note      string   `json:"note,omitempty"`
}

// errBinary marks content that is not text.
var errBinary = errors.New("binary content")

// tailFile reads at most limits.LogTailBytes from the end of the regular
// file at path and scans it. It never opens anything that is not a regular
// file (a FIFO would block, a device would never end).
func tailFile(path string, env *Env, buf []byte) LogSource {
	r := LogSource{Source: path}
	fi, err := os.Stat(path)
	if err != nil {
		r.Note = "unreadable, skipped: " + err.Error()
		return r
	}
	if !fi.Mode().IsRegular() {
		r.Note = fmt.Sprintf("not a regular file (%s), skipped", fi.Mode().Type())
		return r
	}
	r.SizeBytes = fi.Size()
	f, err := os.Open(path)
	if err != nil {
		r.Note = "unreadable, skipped: " + err.Error()
		return r
	}
	defer f.Close()
	off := max(r.SizeBytes-int64(len(buf)), 0)
	n, err := f.ReadAt(buf, off)
	if err != nil && !errors.Is(err, io.EOF) {
		r.Note = "unreadable, skipped: " + err.Error()
		return r
	}
	r.ReadBytes = int64(n)
	data := buf[:n]
	if off > 0 {
		// Started mid-line: drop the partial first line.
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			data = data[i+1:]
		} else {
			data = nil
		}
		r.Note = fmt.Sprintf("large file (%d bytes): scanned the last %d bytes only", r.SizeBytes, n)
	}
	if err := scanText(data, env, &r); err != nil {
		r.Note = strings.TrimPrefix(r.Note+"; ", "; ") + "binary content (NUL or invalid UTF-8), skipped"
		r.Matches, r.Tail, r.Lines, r.Dropped = nil, nil, 0, 0
	}
	return r
}

// scanText scans text line by line: lines matching any of env.LogPatterns
// are kept (redacted, truncated, capped), and the last few lines kept as a
// tail. It refuses binary data.
func scanText(data []byte, env *Env, r *LogSource) error {
	if looksBinary(data) {
		return errBinary
	}
	lim := env.Limits
	tail := make([]string, 0, lim.LogTailLines)
	for len(data) > 0 {
		var line []byte
		if i := bytes.IndexByte(data, '\n'); i >= 0 {
			line, data = data[:i], data[i+1:]
		} else {
			line, data = data, nil
		}
		line = bytes.TrimRight(line, "\r")
		if len(line) == 0 {
			continue
		}
		r.Lines++
		if matchAny(env.LogPatterns, line) {
			if len(r.Matches) < lim.LogMatches {
				r.Matches = append(r.Matches, clip(env, line, lim.LineBytes))
			} else {
				r.Dropped++
			}
		}
		if lim.LogTailLines > 0 {
			if len(tail) == lim.LogTailLines {
				tail = append(tail[:0], tail[1:]...)
			}
			tail = append(tail, string(line))
		}
	}
	for _, l := range tail {
		r.Tail = append(r.Tail, clip(env, []byte(l), lim.LineBytes))
	}
	return nil
}

func matchAny(res []*regexp.Regexp, line []byte) bool {
	for _, re := range res {
		if re.Match(line) {
			return true
		}
	}
	return false
}

// clip redacts a line and cuts it to at most n bytes on a rune boundary.
// Redaction comes first so that a cut never splits a secret into a
// fragment the patterns no longer recognise.
func clip(env *Env, line []byte, n int) string {
	s := env.Redact.String(string(line))
	if len(s) <= n {
		return s
	}
	cut := n
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return s[:cut] + "…"
}

// looksBinary reports NUL bytes, or more than 10% invalid UTF-8 or control
// characters, in the first 8 KiB.
func looksBinary(b []byte) bool {
	if len(b) > 8192 {
		b = b[:8192]
	}
	if bytes.IndexByte(b, 0) >= 0 {
		return true
	}
	n, bad := len(b), 0
	for len(b) > 0 {
		r, size := utf8.DecodeRune(b)
		if r == utf8.RuneError && size <= 1 || r < 0x20 && r != '\n' && r != '\r' && r != '\t' && r != 0x1b {
			bad++
		}
		b = b[size:]
	}
	return bad > 4 && bad*10 > n
}
