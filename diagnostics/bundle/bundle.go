// Package bundle writes a support bundle: one tar.gz with a node's metrics,
// log excerpts, configuration state, verification report and diagnosis, for
// attaching to a bug report. Everything in it was redacted on the node by
// the collectors; Write scrubs every file once more before it is written.
//
//	err := bundle.WriteFile("out.tar.gz", bundle.Contents{Node: "n1", Sections: secs, Diagnosis: &d})
package bundle

import (
	"archive/tar"
	"bytes"
	"compress/gzip"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"time"

	"github.com/guildnet/metaguildnet/diagnostics"
	"github.com/guildnet/metaguildnet/diagnostics/collect"
	"github.com/guildnet/metaguildnet/diagnostics/redact"
	"github.com/guildnet/metaguildnet/messages"
)

// Contents is what goes into a bundle. Nil or empty parts are left out.
type Contents struct {
	Node      string
	Created   time.Time
	Sections  []collect.Section
	Diagnosis *diagnostics.Diagnosis
	Report    *messages.Report
	// Redact scrubs every file before it is written; nil uses the
	// patterns alone. Pass the node's redactor to also remove its literal
	// secret values.
	Redact *redact.Redactor
}

// Manifest is the bundle's manifest.json.
type Manifest struct {
	Node    string    `json:"node"`
	Created time.Time `json:"created"`
	Files   []string  `json:"files"`
	Note    string    `json:"note"`
}

// Write writes the bundle to w as a gzip-compressed tar archive:
//
//	manifest.json      what is in it
//	metrics.json       every section's metrics, by section
//	sections/NAME.json each collector section (system, components, logs, config)
//	logs/SOURCE.txt    per log source: notes, matching lines, last lines
//	report.json        the verification report, when given
//	diagnosis.json     the findings, when given
//	diagnosis.txt      the same as the text view
func Write(w io.Writer, c Contents) error {
	if c.Created.IsZero() {
		c.Created = time.Now().UTC()
	}
	type file struct {
		name string
		data []byte
	}
	var files []file
	addJSON := func(name string, v any) error {
		b, err := json.MarshalIndent(v, "", "  ")
		if err != nil {
			return fmt.Errorf("bundle: encode %s: %w", name, err)
		}
		files = append(files, file{name, append(b, '\n')})
		return nil
	}

	metrics := map[string]map[string]float64{}
	for _, s := range c.Sections {
		metrics[s.Name] = s.Metrics
	}
	if err := addJSON("metrics.json", metrics); err != nil {
		return err
	}
	for _, s := range c.Sections {
		if err := addJSON("sections/"+safeName(s.Name)+".json", s); err != nil {
			return err
		}
		if s.Name == "logs" {
			for _, lf := range logFiles(s) {
				files = append(files, file(lf))
			}
		}
	}
	if c.Report != nil {
		if err := addJSON("report.json", c.Report); err != nil {
			return err
		}
	}
	if c.Diagnosis != nil {
		if err := addJSON("diagnosis.json", c.Diagnosis); err != nil {
			return err
		}
		var b bytes.Buffer
		if err := diagnostics.WriteText(&b, *c.Diagnosis, diagnostics.TextOptions{Evidence: true}); err != nil {
			return fmt.Errorf("bundle: render diagnosis: %w", err)
		}
		files = append(files, file{"diagnosis.txt", b.Bytes()})
	}
	m := Manifest{Node: c.Node, Created: c.Created.UTC(), Note: "Redacted on the node: secret values appear as " + redact.Mask + "."}
	for _, f := range files {
		m.Files = append(m.Files, f.name)
	}
	if err := addJSON("manifest.json", m); err != nil {
		return err
	}
	// The manifest first, then the rest in the order added.
	files = append(files[len(files)-1:], files[:len(files)-1]...)

	gz := gzip.NewWriter(w)
	tw := tar.NewWriter(gz)
	dir := "metaguildnet-" + safeName(c.Node) + "-" + c.Created.UTC().Format("20060102T150405Z")
	for _, f := range files {
		data := c.Redact.Bytes(f.data)
		hdr := &tar.Header{Name: dir + "/" + f.name, Mode: 0o600, Size: int64(len(data)), ModTime: c.Created, Typeflag: tar.TypeReg}
		if err := tw.WriteHeader(hdr); err != nil {
			return fmt.Errorf("bundle: write %s: %w", f.name, err)
		}
		if _, err := tw.Write(data); err != nil {
			return fmt.Errorf("bundle: write %s: %w", f.name, err)
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("bundle: close tar: %w", err)
	}
	if err := gz.Close(); err != nil {
		return fmt.Errorf("bundle: close gzip: %w", err)
	}
	return nil
}

// WriteFile writes the bundle to path atomically (a temporary file renamed
// into place), readable by its owner only.
func WriteFile(path string, c Contents) error {
	tmp, err := os.CreateTemp(filepath.Dir(path), ".bundle-*")
	if err != nil {
		return fmt.Errorf("bundle: create %s: %w", path, err)
	}
	defer os.Remove(tmp.Name())
	if err := Write(tmp, c); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o600); err != nil {
		tmp.Close()
		return fmt.Errorf("bundle: chmod %s: %w", path, err)
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("bundle: close %s: %w", path, err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("bundle: rename into %s: %w", path, err)
	}
	return nil
}

// logFiles renders the logs section (its Data is a []collect.LogSource)
// as one text file per source.
func logFiles(s collect.Section) []struct {
	name string
	data []byte
} {
	var srcs []collect.LogSource
	if json.Unmarshal(s.Data, &srcs) != nil {
		return nil
	}
	var out []struct {
		name string
		data []byte
	}
	seen := map[string]int{}
	for _, src := range srcs {
		var b strings.Builder
		fmt.Fprintf(&b, "source: %s\nsize: %d bytes, read: %d bytes, lines scanned: %d\n", src.Source, src.SizeBytes, src.ReadBytes, src.Lines)
		if src.Note != "" {
			fmt.Fprintf(&b, "note: %s\n", src.Note)
		}
		fmt.Fprintf(&b, "\n== matching lines (%d kept, %d dropped) ==\n", len(src.Matches), src.Dropped)
		for _, l := range src.Matches {
			b.WriteString(l + "\n")
		}
		fmt.Fprintf(&b, "\n== last %d lines ==\n", len(src.Tail))
		for _, l := range src.Tail {
			b.WriteString(l + "\n")
		}
		name := safeName(strings.TrimPrefix(src.Source, "/"))
		if n := seen[name]; n > 0 {
			name = fmt.Sprintf("%s.%d", name, n)
		}
		seen[name]++
		out = append(out, struct {
			name string
			data []byte
		}{"logs/" + name + ".txt", []byte(b.String())})
	}
	return out
}

var unsafeRE = regexp.MustCompile(`[^A-Za-z0-9._-]+`)

// safeName makes a string usable as one file name inside the archive.
func safeName(s string) string {
	s = strings.Trim(unsafeRE.ReplaceAllString(s, "_"), "._")
	if s == "" {
		return "unnamed"
	}
	if len(s) > 100 {
		s = s[:100]
	}
	return s
}
