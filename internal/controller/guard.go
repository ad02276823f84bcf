package controller

import (
	"sync"
	"time"

	"go.uber.org/zap"
)

// Per-node limits (syncRate, heartbeatRate, ...) are defined in limits.go.

// bucket is a token bucket plus a count of requests being answered.
type bucket struct {
	tokens   float64
	last     time.Time
	inflight int
}

// nodeLimiter holds one bucket per node and kind. Its keys come from
// subjects the server binds to enrolled identities, so it holds at most a
// few entries per enrolled node; removal forgets them.
type nodeLimiter struct {
	rate, burst float64
	maxInFlight int // 0: not tracked

	mu sync.Mutex
	m  map[string]*bucket
}

func newNodeLimiter(rate, burst float64, maxInFlight int) *nodeLimiter {
	return &nodeLimiter{rate: rate, burst: burst, maxInFlight: maxInFlight, m: map[string]*bucket{}}
}

// allow takes a token for node; with in-flight tracking the caller must
// call done(node) once it has answered.
func (l *nodeLimiter) allow(node string, now time.Time) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	b := l.m[node]
	if b == nil {
		b = &bucket{tokens: l.burst, last: now}
		l.m[node] = b
	}
	b.tokens = min(l.burst, b.tokens+now.Sub(b.last).Seconds()*l.rate)
	b.last = now
	if b.tokens < 1 || (l.maxInFlight > 0 && b.inflight >= l.maxInFlight) {
		return false
	}
	b.tokens--
	if l.maxInFlight > 0 {
		b.inflight++
	}
	return true
}

func (l *nodeLimiter) done(node string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if b := l.m[node]; b != nil && b.inflight > 0 {
		b.inflight--
	}
}

func (l *nodeLimiter) forget(node string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	delete(l.m, node)
}

// logLimiter lets a kind of log line through at most once per interval and
// says how many were held back meanwhile: a node that floods the
// controller with refused messages must not flood its log too.
type logLimiter struct {
	every time.Duration

	mu   sync.Mutex
	last map[string]time.Time
	held map[string]int
}

// maxLogKeys bounds the kinds remembered; past it they are forgotten at
// once (a burst of new kinds then logs a little more, never grows memory).
const maxLogKeys = 4096

func newLogLimiter(every time.Duration) *logLimiter {
	return &logLimiter{every: every, last: map[string]time.Time{}, held: map[string]int{}}
}

// allow reports whether a line of this key may be logged now, and how many
// were held back since the last one.
func (l *logLimiter) allow(key string, now time.Time) (ok bool, held int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if t, seen := l.last[key]; seen && now.Sub(t) < l.every {
		l.held[key]++
		return false, 0
	}
	if len(l.last) >= maxLogKeys {
		clear(l.last)
		clear(l.held)
	}
	held = l.held[key]
	delete(l.held, key)
	l.last[key] = now
	return true, held
}

// warn logs msg at warn level unless a line of the same key was logged
// within the interval.
func (l *logLimiter) warn(log *zap.Logger, key, msg string, fields ...zap.Field) {
	ok, held := l.allow(key, time.Now())
	if !ok {
		return
	}
	if held > 0 {
		fields = append(fields, zap.Int("suppressed_since_last", held))
	}
	log.Warn(msg, fields...)
}
