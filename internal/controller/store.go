package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

// resultStore writes results to the MGN_RESULTS stream in batches.
//
// The controller is the stream's only writer: agents publish results on
// their own subjects (mgn.res.NODE), which no stream captures, and
// learn later, through their sync requests, which of them are stored. So a
// fan-out to a thousand nodes costs a few stream writes instead of a
// thousand, and no acknowledgement has to reach each agent before the
// task is done.
//
// Writes are group commits: while one batch is being stored the next one
// fills, so there is no timer, and an idle store adds no latency. Every
// result gets a sequence number; wait(seq) returns once that result (and
// every one before it) is durable.
type resultStore struct {
	js       jetstream.JetStream
	log      *zap.Logger
	maxBytes int // bound on one stream message
	// acting is the lease check: a controller that is not active stores
	// nothing (the results stay with the agents).
	acting func() bool

	mu      sync.Mutex
	queue   []queued
	seq     uint64        // sequence of the last queued result
	stored  uint64        // results up to this sequence are durable
	changed chan struct{} // closed and replaced when stored advances
	kick    chan struct{}
	done    chan struct{} // closed when run returns
}

type queued struct {
	taskID string
	data   []byte // one encoded messages.Result
}

func newResultStore(js jetstream.JetStream, log *zap.Logger, maxBytes int) *resultStore {
	return &resultStore{js: js, log: log, maxBytes: maxBytes,
		changed: make(chan struct{}), kick: make(chan struct{}, 1), done: make(chan struct{})}
}

// add queues an encoded messages.Result of task id for storing and returns
// its sequence number.
func (s *resultStore) add(id string, result []byte) uint64 {
	s.mu.Lock()
	s.seq++
	seq := s.seq
	s.queue = append(s.queue, queued{taskID: id, data: result})
	s.mu.Unlock()
	select {
	case s.kick <- struct{}{}:
	default:
	}
	return seq
}

// last is the sequence of the last result queued.
func (s *resultStore) last() uint64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.seq
}

// wait blocks until the result with sequence seq is durable.
func (s *resultStore) wait(ctx context.Context, seq uint64) error {
	for {
		s.mu.Lock()
		stored, ch := s.stored, s.changed
		s.mu.Unlock()
		if stored >= seq {
			return nil
		}
		select {
		case <-ch:
		case <-s.done:
			s.mu.Lock()
			stored = s.stored
			s.mu.Unlock()
			if stored >= seq {
				return nil
			}
			return errors.New("result store stopped")
		case <-ctx.Done():
			return fmt.Errorf("wait for result store: %w", ctx.Err())
		}
	}
}

// run stores batches until ctx ends, then stores what is still queued
// (bounded by drain) and returns.
func (s *resultStore) run(ctx context.Context, drain time.Duration) {
	defer close(s.done)
	for {
		select {
		case <-s.kick:
		case <-ctx.Done():
			dctx, cancel := context.WithTimeout(context.Background(), drain)
			s.flush(dctx)
			cancel()
			return
		}
		s.flush(ctx)
	}
}

// flush stores everything queued, retrying with backoff until it succeeds
// or ctx ends. Results stay queued until they are stored.
func (s *resultStore) flush(ctx context.Context) {
	for attempt := 0; ; attempt++ {
		s.mu.Lock()
		batch, last := s.queue, s.seq
		s.mu.Unlock()
		if len(batch) == 0 {
			return
		}
		if s.acting != nil && !s.acting() {
			return // not the active controller (lease.go): it stores nothing
		}
		err := s.write(ctx, batch)
		if err == nil {
			s.mu.Lock()
			s.queue = s.queue[len(batch):]
			if len(s.queue) == 0 && cap(batch) <= 1<<16 {
				clear(batch)
				s.queue = batch[:0] // reuse it: every fan-out fills one
			}
			s.stored = last
			close(s.changed)
			s.changed = make(chan struct{})
			s.mu.Unlock()
			continue // results queued meanwhile form the next batch
		}
		s.log.Warn("store results (agents keep them until they are stored; retrying)", zap.Int("results", len(batch)), zap.Error(err))
		select {
		case <-ctx.Done():
			return
		case <-time.After(min(100*time.Millisecond<<min(attempt, 6), 5*time.Second)):
		}
	}
}

// write stores batch as ResultBatch messages, one or more per task (each
// within the size bound), all published at once and then awaited. Order
// within a task is kept: for each node the first outcome wins.
func (s *resultStore) write(ctx context.Context, batch []queued) error {
	type group struct {
		id    string
		items [][]byte
	}
	var order []*group
	byTask := map[string]*group{}
	for _, q := range batch {
		g := byTask[q.taskID]
		if g == nil {
			g = &group{id: q.taskID}
			byTask[q.taskID] = g
			order = append(order, g)
		}
		g.items = append(g.items, q.data)
	}
	var futures []jetstream.PubAckFuture
	for _, g := range order {
		id, _ := json.Marshal(g.id)
		head := fmt.Sprintf(`{"v":%d,"task_id":%s,"results":[`, messages.Version, id)
		for i := 0; i < len(g.items); {
			// Size the message first: it is handed to the publisher, which
			// keeps it until the store acknowledges it.
			size, end := len(head)+2, i
			for ; end < len(g.items) && (end == i || size+len(g.items[end])+1 <= s.maxBytes); end++ {
				size += len(g.items[end]) + 1
			}
			msg := append(make([]byte, 0, size), head...)
			for k := i; k < end; k++ {
				if k > i {
					msg = append(msg, ',')
				}
				msg = append(msg, g.items[k]...)
			}
			msg = append(msg, "]}"...)
			i = end
			f, err := s.js.PublishAsync(messages.StoredResultsSubject(g.id), msg)
			if err != nil {
				return fmt.Errorf("store results of %s: %w", g.id, err)
			}
			futures = append(futures, f)
		}
	}
	for _, f := range futures {
		select {
		case <-f.Ok():
		case err := <-f.Err():
			return fmt.Errorf("store results: %w", err)
		case <-ctx.Done():
			return fmt.Errorf("store results: %w", ctx.Err())
		}
	}
	return nil
}

// storedResults reads every stored result of one task; for each node the
// first stored outcome wins.
func storedResults(ctx context.Context, st jetstream.Stream, taskID string, maxBytes int) (map[string]messages.Result, error) {
	out := map[string]messages.Result{}
	subj := messages.StoredResultsSubject(taskID)
	for seq := uint64(1); ; {
		m, err := st.GetMsg(ctx, seq, jetstream.WithGetMsgSubject(subj))
		if errors.Is(err, jetstream.ErrMsgNotFound) {
			return out, nil
		}
		if err != nil {
			return nil, fmt.Errorf("read results of %s: %w", taskID, err)
		}
		seq = m.Sequence + 1
		b, err := messages.Decode[messages.ResultBatch](m.Data, maxBytes+4<<10)
		if err != nil || b.TaskID != taskID {
			continue // unreadable: the other batches still count
		}
		for _, r := range b.Results {
			if _, have := out[r.Node]; !have {
				out[r.Node] = r
			}
		}
	}
}
