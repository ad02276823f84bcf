package messages

import (
	"encoding/json"
	"fmt"
	"strings"
	"time"
)

// A backup file is JSON lines: one BackupHeader, then one BackupRecord per
// stored message of every stream the controller keeps (the KV buckets, the
// results stream and the object stores are all JetStream streams), in
// stream order. Restoring creates each stream with its recorded
// configuration and publishes its records again, so every bucket, object
// and stored result comes back as it was.

// BackupKind marks a backup file's header.
const BackupKind = "metaguildnet-backup"

// MaxBackupStreams bounds the streams one backup names.
const MaxBackupStreams = 64

// BackupHeader opens a backup file.
type BackupHeader struct {
	V         int       `json:"v"`
	Kind      string    `json:"kind"`
	CreatedAt time.Time `json:"created_at"`
	// ControllerVersion is the version of the controller the state came from.
	ControllerVersion string `json:"controller_version,omitempty"`
	// Streams are the streams the file holds, each with its JetStream
	// configuration (as the server reports it) and how many records follow.
	Streams []BackupStream `json:"streams"`
}

// BackupStream is one stream of a backup.
type BackupStream struct {
	Name    string          `json:"name"`
	Config  json.RawMessage `json:"config"`
	Records uint64          `json:"records"`
}

// BackupRecord is one stored message.
type BackupRecord struct {
	Stream  string              `json:"stream"`
	Subject string              `json:"subject"`
	Headers map[string][]string `json:"headers,omitempty"`
	Data    []byte              `json:"data,omitempty"`
}

func (h *BackupHeader) Validate() error {
	if err := checkVersion(h.V); err != nil {
		return err
	}
	if h.Kind != BackupKind {
		return fmt.Errorf("kind: %q, want %q (not a MetaGuildNet backup)", h.Kind, BackupKind)
	}
	if len(h.Streams) == 0 || len(h.Streams) > MaxBackupStreams {
		return fmt.Errorf("streams: %d, want 1 to %d", len(h.Streams), MaxBackupStreams)
	}
	seen := map[string]bool{}
	for i, s := range h.Streams {
		if err := validStreamName(s.Name); err != nil {
			return fmt.Errorf("streams[%d].name: %w", i, err)
		}
		if seen[s.Name] {
			return fmt.Errorf("streams[%d].name: %q twice", i, s.Name)
		}
		seen[s.Name] = true
		if !json.Valid(s.Config) || len(s.Config) < 2 || s.Config[0] != '{' {
			return fmt.Errorf("streams[%d].config: not a JSON object", i)
		}
	}
	return nil
}

func (r *BackupRecord) Validate() error {
	if err := validStreamName(r.Stream); err != nil {
		return fmt.Errorf("stream: %w", err)
	}
	if r.Subject == "" || len(r.Subject) > 1024 || strings.ContainsAny(r.Subject, " \t\r\n*>") {
		return fmt.Errorf("subject: %q is not a literal subject", r.Subject)
	}
	return nil
}

// validStreamName checks a JetStream stream name as the server would.
func validStreamName(s string) error {
	if s == "" || len(s) > 255 || strings.ContainsAny(s, " \t\r\n.*>/\\") {
		return fmt.Errorf("%q is not a stream name", s)
	}
	return nil
}
