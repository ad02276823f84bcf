package controller

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"
)

// Reading a whole KV bucket without a consumer (docs/HA.md, "Becoming
// active"). nats.go's ListKeys, Keys and WatchAll create an ordered
// consumer, and creating a consumer in a JetStream cluster needs the meta
// leader: when the controller that was just lost held it, the survivors
// wait 4-9 s for a Raft election. A failover must not.
//
// kvEntries reads the bucket's stream with batched direct gets
// ($JS.API.DIRECT.GET, next_by_subj, batch), which any replica of the
// stream answers (the in-process one first), and one stream info, which the
// stream's leader answers without the meta leader, to know how far the
// stream goes: the walk goes on until the local replica has everything the
// leader has. Every bucket of the controller allows direct gets (nats.go
// creates KV buckets and object stores with AllowDirect).

const (
	// kvPageMsgs and kvPageBytes bound one direct-get batch; a large
	// bucket (a 10,000-node registry) is read in pages.
	kvPageMsgs  = 512
	kvPageBytes = 1 << 20
	// kvCatchUp bounds how long a walk waits for the local replica to
	// reach the leader's last sequence before it goes with what it has.
	kvCatchUp = 2 * time.Second
)

// kvEntry is a key's newest live value.
type kvEntry struct {
	Key   string
	Value []byte
	Rev   uint64
}

// kvEntries returns every live key of bucket with its newest value, in key
// order; deleted and purged keys are left out.
func kvEntries(ctx context.Context, js jetstream.JetStream, bucket string) ([]kvEntry, error) {
	stream := "KV_" + bucket
	prefix := "$KV." + bucket + "."
	target, err := streamLastSeq(ctx, js, stream)
	if err != nil {
		return nil, fmt.Errorf("bucket %s: %w", bucket, err)
	}
	newest := map[string]kvEntry{}
	deleted := map[string]uint64{}
	var last uint64
	deadline := time.Now().Add(kvCatchUp)
	for {
		done, err := directWalk(ctx, js, stream, prefix+">", last+1, func(m *nats.Msg, seq uint64) {
			last = max(last, seq)
			key, ok := strings.CutPrefix(m.Header.Get(jetstream.SubjectHeader), prefix)
			if !ok || key == "" {
				return
			}
			switch m.Header.Get("KV-Operation") {
			case "DEL", "PURGE":
				if seq > newest[key].Rev && seq > deleted[key] {
					delete(newest, key)
					deleted[key] = seq
				}
			default:
				if seq > newest[key].Rev && seq > deleted[key] {
					newest[key] = kvEntry{Key: key, Value: m.Data, Rev: seq}
					delete(deleted, key)
				}
			}
		})
		if err != nil {
			return nil, fmt.Errorf("bucket %s: %w", bucket, err)
		}
		if !done {
			continue // a page ended: read on from last
		}
		if last >= target || time.Now().After(deadline) {
			break
		}
		// The local replica is behind the leader: wait for it briefly.
		select {
		case <-ctx.Done():
			return nil, fmt.Errorf("bucket %s: waiting for the local replica (at %d of %d): %w", bucket, last, target, ctx.Err())
		case <-time.After(20 * time.Millisecond):
		}
	}
	out := make([]kvEntry, 0, len(newest))
	for _, e := range newest {
		out = append(out, e)
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Key < out[j].Key })
	return out, nil
}

// kvKeys lists a bucket's live keys in order, without a consumer.
func kvKeys(ctx context.Context, js jetstream.JetStream, bucket string) ([]string, error) {
	es, err := kvEntries(ctx, js, bucket)
	if err != nil {
		return nil, err
	}
	keys := make([]string, len(es))
	for i, e := range es {
		keys[i] = e.Key
	}
	return keys, nil
}

// streamLastSeq is the stream's last sequence as its leader knows it (0
// when it holds no message): one STREAM.INFO, which the stream leader
// answers without the meta leader (nats-server jsStreamInfoRequest).
func streamLastSeq(ctx context.Context, js jetstream.JetStream, stream string) (uint64, error) {
	var s jetstream.Stream
	err := leaderRetry(ctx, func(ctx context.Context) (err error) {
		s, err = js.Stream(ctx, stream)
		return err
	})
	if err != nil {
		return 0, fmt.Errorf("stream info %s: %w", stream, err)
	}
	st := s.CachedInfo().State
	if st.Msgs == 0 {
		return 0, nil
	}
	return st.LastSeq, nil
}

type directGetRequest struct {
	Seq      uint64 `json:"seq"`
	NextFor  string `json:"next_by_subj"`
	Batch    int    `json:"batch"`
	MaxBytes int    `json:"max_bytes"`
}

// directWalk asks for one batch of the stream's messages on filter from
// seq on and hands each to fn with its sequence, once the whole batch has
// arrived. done is true when nothing is left after the batch (as the
// answering replica knows it). A batch that does not arrive within
// leaderAttempt is asked for again (until ctx ends): the request may have
// gone to a replica that does not answer (a peer paused by SIGSTOP still
// has its subscriptions).
func directWalk(ctx context.Context, js jetstream.JetStream, stream, filter string, seq uint64, fn func(*nats.Msg, uint64)) (done bool, err error) {
	type got struct {
		m   *nats.Msg
		seq uint64
	}
	var page []got
	err = leaderRetry(ctx, func(ctx context.Context) error {
		page = page[:0]
		var err error
		done, err = directPage(ctx, js, stream, filter, seq, func(m *nats.Msg, s uint64) { page = append(page, got{m, s}) })
		return err
	})
	if err != nil {
		return false, err
	}
	for _, g := range page {
		fn(g.m, g.seq)
	}
	return done, nil
}

func directPage(ctx context.Context, js jetstream.JetStream, stream, filter string, seq uint64, fn func(*nats.Msg, uint64)) (done bool, err error) {
	nc := js.Conn()
	prefix := js.Options().APIPrefix
	if prefix == "" {
		prefix = "$JS.API."
	}
	if !strings.HasSuffix(prefix, ".") {
		prefix += "."
	}
	inbox := nc.NewRespInbox()
	sub, err := nc.SubscribeSync(inbox)
	if err != nil {
		return false, fmt.Errorf("direct get: %w", err)
	}
	defer sub.Unsubscribe()
	sub.SetPendingLimits(-1, 4*kvPageBytes)
	req, _ := json.Marshal(directGetRequest{Seq: seq, NextFor: filter, Batch: kvPageMsgs, MaxBytes: kvPageBytes})
	if err := nc.PublishRequest(prefix+"DIRECT.GET."+stream, inbox, req); err != nil {
		return false, fmt.Errorf("direct get %s: %w", stream, err)
	}
	for n := 0; n <= kvPageMsgs+1; n++ {
		m, err := sub.NextMsgWithContext(ctx)
		if err != nil {
			if errors.Is(err, context.DeadlineExceeded) {
				err = fmt.Errorf("no replica of %s answered a direct get (JetStream quorum?): %w", stream, err)
			}
			return false, fmt.Errorf("direct get %s from %d: %w", stream, seq, err)
		}
		if status := m.Header.Get("Status"); status != "" {
			switch status {
			case "404": // nothing at or after seq
				return true, nil
			case "503": // no replica subscribed (yet)
				return false, fmt.Errorf("direct get %s: %w", stream, nats.ErrNoResponders)
			case "204": // end of batch
				np, _ := strconv.ParseUint(m.Header.Get("Nats-Num-Pending"), 10, 64)
				return np == 0, nil
			default:
				return false, fmt.Errorf("direct get %s from %d: status %s %s", stream, seq, status, m.Header.Get("Description"))
			}
		}
		s, err := strconv.ParseUint(m.Header.Get(jetstream.SequenceHeader), 10, 64)
		if err != nil {
			return false, fmt.Errorf("direct get %s: message without a sequence", stream)
		}
		fn(m, s)
	}
	return false, fmt.Errorf("direct get %s from %d: more messages than the batch asked for", stream, seq)
}

// directAll hands every message of the stream on filter to fn, in
// sequence order, page by page (no catch-up with the leader: callers that
// need it use kvEntries).
func directAll(ctx context.Context, js jetstream.JetStream, stream, filter string, fn func(*nats.Msg, uint64) error) error {
	var last uint64
	var ferr error
	for {
		done, err := directWalk(ctx, js, stream, filter, last+1, func(m *nats.Msg, seq uint64) {
			last = max(last, seq)
			if ferr == nil {
				ferr = fn(m, seq)
			}
		})
		if err != nil {
			return err
		}
		if ferr != nil {
			return ferr
		}
		if done {
			return nil
		}
	}
}

// maxObjectRead bounds what objGetBytes reads into memory.
const maxObjectRead = 64 << 20

// objList lists an object store's live objects (newest meta of each name,
// deleted ones left out) without a consumer, as kvEntries does for KV.
func objList(ctx context.Context, js jetstream.JetStream, bucket string) ([]jetstream.ObjectInfo, error) {
	stream := "OBJ_" + bucket
	newest := map[string]*jetstream.ObjectInfo{}
	err := directAll(ctx, js, stream, "$O."+bucket+".M.>", func(m *nats.Msg, seq uint64) error {
		var info jetstream.ObjectInfo
		if json.Unmarshal(m.Data, &info) != nil || info.Name == "" {
			return nil // unreadable meta: the others still count
		}
		newest[info.Name] = &info
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("list objects of %s: %w", bucket, err)
	}
	out := make([]jetstream.ObjectInfo, 0, len(newest))
	for _, in := range newest {
		if !in.Deleted {
			out = append(out, *in)
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

// objGetBytes reads an object's content without a consumer: its meta by a
// direct get of the last message on the name's subject, then its chunks in
// order, checked against the meta's size and SHA-256 digest.
func objGetBytes(ctx context.Context, js jetstream.JetStream, bucket, name string) ([]byte, error) {
	stream := "OBJ_" + bucket
	var info *jetstream.ObjectInfo
	metaSubj := "$O." + bucket + ".M." + base64.URLEncoding.EncodeToString([]byte(name))
	err := directAll(ctx, js, stream, metaSubj, func(m *nats.Msg, _ uint64) error {
		var in jetstream.ObjectInfo
		if err := json.Unmarshal(m.Data, &in); err != nil {
			return fmt.Errorf("object %s: meta: %w", name, err)
		}
		info = &in
		return nil
	})
	if err != nil {
		return nil, err
	}
	if info == nil || info.Deleted {
		return nil, fmt.Errorf("object %s in %s: %w", name, bucket, jetstream.ErrObjectNotFound)
	}
	if info.Size > maxObjectRead {
		return nil, fmt.Errorf("object %s: %d bytes, more than the %d read at once", name, info.Size, maxObjectRead)
	}
	buf := make([]byte, 0, info.Size)
	h := sha256.New()
	err = directAll(ctx, js, stream, "$O."+bucket+".C."+info.NUID, func(m *nats.Msg, _ uint64) error {
		if uint64(len(buf)+len(m.Data)) > info.Size {
			return fmt.Errorf("object %s: chunks longer than its size %d", name, info.Size)
		}
		buf = append(buf, m.Data...)
		h.Write(m.Data)
		return nil
	})
	if err != nil {
		return nil, err
	}
	if uint64(len(buf)) != info.Size {
		return nil, fmt.Errorf("object %s: read %d of %d bytes", name, len(buf), info.Size)
	}
	if want := "SHA-256=" + base64.URLEncoding.EncodeToString(h.Sum(nil)); info.Digest != "" && info.Digest != want {
		return nil, fmt.Errorf("object %s: digest mismatch", name)
	}
	return buf, nil
}
