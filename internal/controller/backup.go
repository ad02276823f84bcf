package controller

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/internal/buildinfo"
	"github.com/guildnet/metaguildnet/internal/privdir"
	"github.com/guildnet/metaguildnet/messages"
)

// Backup and restore work on streams, not on what the controller makes of
// them: every piece of fleet state (the registry, token hashes, open and
// past tasks, stored results, reports, diagnoses) is a JetStream stream, so
// copying each stream's configuration and messages copies all of it,
// including state a later version adds, without a list to keep in step.

// BackupStats says what a backup or a restore moved.
type BackupStats struct {
	Streams int            `json:"streams"`
	Records int            `json:"records"`
	Bytes   int64          `json:"bytes"`
	By      map[string]int `json:"by_stream"`
}

// maxCatchUp bounds how often Backup reads on after a stream grew while it
// was read (a busy controller keeps writing; each round reads only what
// was added).
const maxCatchUp = 5

// Backup writes the state of the controller that nc (an operator
// connection) reaches to w, while it runs. Each stream is read up to its
// newest message, then on until it stops growing, so a KV key rewritten
// during the backup (its old revision deleted) is in it with its new
// value. Streams are read one after the other: a task that settles during
// the backup may be in it as open with some of its results, which a
// restored controller finishes as it finishes any open task after a
// restart.
func Backup(ctx context.Context, nc *nats.Conn, w io.Writer) (BackupStats, error) {
	st := BackupStats{By: map[string]int{}}
	js, err := jetstream.New(nc)
	if err != nil {
		return st, fmt.Errorf("backup: %w", err)
	}
	var infos []*jetstream.StreamInfo
	l := js.ListStreams(ctx)
	for si := range l.Info() {
		if si.Config.Name == "KV_"+leaseBucket {
			continue // who is active now: meaningless in a restored controller
		}
		infos = append(infos, si)
	}
	if err := l.Err(); err != nil {
		return st, fmt.Errorf("backup: list streams: %w", err)
	}
	if len(infos) == 0 {
		return st, errors.New("backup: the controller holds no streams")
	}
	hdr := messages.BackupHeader{V: messages.Version, Kind: messages.BackupKind, CreatedAt: time.Now().UTC(), ControllerVersion: buildinfo.Version}
	for _, si := range infos {
		cfg, err := json.Marshal(si.Config)
		if err != nil {
			return st, fmt.Errorf("backup: stream %s config: %w", si.Config.Name, err)
		}
		hdr.Streams = append(hdr.Streams, messages.BackupStream{Name: si.Config.Name, Config: cfg, Records: si.State.Msgs})
	}
	bw := bufio.NewWriterSize(w, 1<<20)
	enc := json.NewEncoder(bw)
	if err := enc.Encode(&hdr); err != nil {
		return st, fmt.Errorf("backup: write: %w", err)
	}
	for _, si := range infos {
		name := si.Config.Name
		s, err := js.Stream(ctx, name)
		if err != nil {
			return st, fmt.Errorf("backup: stream %s: %w", name, err)
		}
		next := si.State.FirstSeq
		for round := 0; ; round++ {
			info, err := s.Info(ctx)
			if err != nil {
				return st, fmt.Errorf("backup: stream %s: %w", name, err)
			}
			last := info.State.LastSeq
			if info.State.Msgs == 0 || next > last || round > maxCatchUp {
				break
			}
			next = max(next, info.State.FirstSeq, 1)
			for ; next <= last; next++ {
				m, err := s.GetMsg(ctx, next)
				if errors.Is(err, jetstream.ErrMsgNotFound) {
					continue // deleted, or rolled up
				}
				if err != nil {
					return st, fmt.Errorf("backup: stream %s message %d: %w", name, next, err)
				}
				rec := messages.BackupRecord{Stream: name, Subject: m.Subject, Headers: m.Header, Data: m.Data}
				if err := enc.Encode(&rec); err != nil {
					return st, fmt.Errorf("backup: write: %w", err)
				}
				st.Records++
				st.By[name]++
				st.Bytes += int64(len(m.Data))
			}
		}
		st.Streams++
	}
	if err := bw.Flush(); err != nil {
		return st, fmt.Errorf("backup: write: %w", err)
	}
	return st, nil
}

// maxBackupLine bounds one line of a backup file: a record's data is at
// most a message (MaxMaxMessageBytes), a third larger in base64.
const maxBackupLine = 2 * MaxMaxMessageBytes

// Restore rebuilds a controller's state in dataDir from a backup read from
// r. dataDir must hold no JetStream state yet (a controller's data dir is
// never merged into). The restored controller gets a new operator key when
// it starts; nodes keep theirs and reconnect as they were.
func Restore(ctx context.Context, r io.Reader, dataDir string) (BackupStats, error) {
	st := BackupStats{By: map[string]int{}}
	store := filepath.Join(dataDir, "jetstream")
	if ents, err := os.ReadDir(store); err == nil && len(ents) > 0 {
		return st, fmt.Errorf("restore: %s already holds a controller's state: restore into a new data dir", dataDir)
	}
	if _, err := privdir.Ensure(dataDir); err != nil {
		return st, fmt.Errorf("restore: data dir: %w", err)
	}
	ns, err := server.NewServer(&server.Options{ServerName: "mgn-controller", JetStream: true, StoreDir: store,
		DontListen: true, NoSigs: true, NoLog: true, MaxPayload: int32(MaxMaxMessageBytes + serverPayloadMargin)})
	if err != nil {
		return st, fmt.Errorf("restore: nats server: %w", err)
	}
	go ns.Start()
	defer func() { ns.Shutdown(); ns.WaitForShutdown() }()
	if !ns.ReadyForConnections(15 * time.Second) {
		return st, errors.New("restore: the embedded server did not start")
	}
	nc, err := nats.Connect("", nats.InProcessServer(ns))
	if err != nil {
		return st, fmt.Errorf("restore: connect: %w", err)
	}
	defer nc.Close()
	js, err := jetstream.New(nc)
	if err != nil {
		return st, fmt.Errorf("restore: %w", err)
	}

	sc := bufio.NewScanner(r)
	sc.Buffer(make([]byte, 0, 1<<20), maxBackupLine)
	if !sc.Scan() {
		return st, fmt.Errorf("restore: empty backup (%v)", sc.Err())
	}
	hdr, err := messages.Decode[messages.BackupHeader](sc.Bytes(), maxBackupLine)
	if err != nil {
		return st, fmt.Errorf("restore: line 1: %w", err)
	}
	known := map[string]bool{}
	for _, s := range hdr.Streams {
		var cfg jetstream.StreamConfig
		if err := json.Unmarshal(s.Config, &cfg); err != nil || cfg.Name != s.Name {
			return st, fmt.Errorf("restore: line 1: stream %s: configuration unreadable or for another stream", s.Name)
		}
		if _, err := js.CreateStream(ctx, cfg); err != nil {
			return st, fmt.Errorf("restore: create stream %s: %w", s.Name, err)
		}
		known[s.Name] = true
		st.Streams++
	}
	for line := 2; sc.Scan(); line++ {
		rec, err := messages.Decode[messages.BackupRecord](sc.Bytes(), maxBackupLine)
		if err != nil {
			return st, fmt.Errorf("restore: line %d: %w", line, err)
		}
		if !known[rec.Stream] {
			return st, fmt.Errorf("restore: line %d: stream %q is not in the header", line, rec.Stream)
		}
		h := nats.Header{}
		for k, v := range rec.Headers {
			// Conditions of the original write, not part of the state.
			if !strings.HasPrefix(k, "Nats-Expected-") {
				h[k] = v
			}
		}
		ack, err := js.PublishMsg(ctx, &nats.Msg{Subject: rec.Subject, Header: h, Data: rec.Data})
		if err != nil {
			return st, fmt.Errorf("restore: line %d (stream %s, %s): %w", line, rec.Stream, rec.Subject, err)
		}
		if ack.Stream != rec.Stream {
			return st, fmt.Errorf("restore: line %d: %s was stored in stream %s, not %s", line, rec.Subject, ack.Stream, rec.Stream)
		}
		st.Records++
		st.By[rec.Stream]++
		st.Bytes += int64(len(rec.Data))
	}
	if err := sc.Err(); err != nil {
		return st, fmt.Errorf("restore: after %d records: %w", st.Records, err)
	}
	return st, nil
}
