package dashboard

import (
	"fmt"
	"net/http"
	"sync"
	"time"
)

// hub fans change notices out to the open event streams. Changes within
// the coalescing interval make one event, so a sweep of 5,000 nodes makes
// a handful of page refreshes, not thousands; a slow page misses nothing
// (each stream has a one-slot mailbox: "something changed since you last
// looked").
type hub struct {
	every time.Duration
	max   int

	mu      sync.Mutex
	subs    map[chan uint64]struct{}
	seq     uint64
	pending bool
	done    chan struct{}
}

func newHub(every time.Duration, max int) *hub {
	return &hub{every: every, max: max, subs: map[chan uint64]struct{}{}, done: make(chan struct{})}
}

func (h *hub) notify(string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.pending {
		return
	}
	h.pending = true
	time.AfterFunc(h.every, h.broadcast)
}

func (h *hub) broadcast() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.pending = false
	h.seq++
	for ch := range h.subs {
		select {
		case <-ch: // replace an unread notice with the newer one
		default:
		}
		ch <- h.seq
	}
}

func (h *hub) subscribe() (chan uint64, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if len(h.subs) >= h.max {
		return nil, false
	}
	ch := make(chan uint64, 1)
	h.subs[ch] = struct{}{}
	return ch, true
}

func (h *hub) unsubscribe(ch chan uint64) {
	h.mu.Lock()
	delete(h.subs, ch)
	h.mu.Unlock()
}

func (h *hub) close() { close(h.done) }

// events is the SSE stream. Each connect starts with "hello" (the page
// fetches a fresh copy: it may have missed changes while it was away, as
// across a controller restart), then "change" after each change; "retry"
// makes the browser reconnect a second after the stream breaks.
func (s *Server) events(w http.ResponseWriter, r *http.Request) {
	if s.o.RequireSignIn && s.auth.session(r, time.Now()) == nil {
		s.forbidden(w, r, "sign in first")
		return
	}
	fl, ok := w.(http.Flusher)
	if !ok {
		http.Error(w, "streaming unsupported", http.StatusInternalServerError)
		return
	}
	ch, ok := s.hub.subscribe()
	if !ok {
		http.Error(w, "too many open dashboards", http.StatusServiceUnavailable)
		return
	}
	defer s.hub.unsubscribe(ch)
	h := w.Header()
	h.Set("Content-Type", "text/event-stream")
	h.Set("Cache-Control", "no-store")
	h.Set("X-Accel-Buffering", "no")
	fmt.Fprintf(w, "retry: 1000\nevent: hello\ndata: %s\n\n", s.boot)
	fl.Flush()
	ping := time.NewTicker(15 * time.Second)
	defer ping.Stop()
	for {
		select {
		case seq := <-ch:
			fmt.Fprintf(w, "event: change\ndata: %d\n\n", seq)
		case <-ping.C:
			fmt.Fprint(w, ": ping\n\n")
		case <-r.Context().Done():
			return
		case <-s.hub.done:
			return
		}
		fl.Flush()
	}
}
