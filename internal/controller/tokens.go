package controller

import (
	"context"
	"crypto/rand"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/messages"
)

// TokenPrefix marks join tokens so that people and secret scanners can
// recognise them.
const TokenPrefix = "mgnt_"

// tokenRecord is what is stored for a token: never the token itself.
type tokenRecord struct {
	ExpiresAt time.Time `json:"expires_at"`
	Reusable  bool      `json:"reusable"`
	Used      bool      `json:"used"`
	CreatedAt time.Time `json:"created_at"`
	UsedBy    []string  `json:"used_by,omitempty"`
	// Scope limits the claims of the nodes the token enrolls.
	Scope messages.TokenScope `json:"scope,omitzero"`
}

// tokenStore keeps join tokens by their SHA-256 in a KV bucket with an
// in-memory copy for the authenticator, which must not do I/O.
type tokenStore struct {
	kv jetstream.KeyValue
	// pin is the TLS CA pin that new tokens carry after a "." (tlspin);
	// only the part before it is the secret.
	pin string

	mu sync.RWMutex
	m  map[string]tokenRecord
}

// newTokenStore loads the tokens bucket without a consumer (kvEntries): it
// runs on every activation of a cluster peer.
func newTokenStore(ctx context.Context, js jetstream.JetStream, kv jetstream.KeyValue) (*tokenStore, error) {
	ts := &tokenStore{kv: kv, m: map[string]tokenRecord{}}
	entries, err := kvEntries(ctx, js, kv.Bucket())
	if err != nil {
		return nil, fmt.Errorf("list tokens: %w", err)
	}
	for _, e := range entries {
		var r tokenRecord
		if json.Unmarshal(e.Value, &r) == nil {
			ts.m[e.Key] = r
		}
	}
	return ts, nil
}

func hashToken(tok string) string {
	h := sha256.Sum256([]byte(tok))
	return hex.EncodeToString(h[:])
}

// create makes a token valid for ttl.
// The token carries the CA pin (if any) and urls, the controllers' URLs
// for the agent to dial (messages.JoinToken); only its secret is stored,
// hashed.
func (ts *tokenStore) create(ctx context.Context, ttl time.Duration, reusable bool, scope messages.TokenScope, urls []string) (string, tokenRecord, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", tokenRecord{}, fmt.Errorf("token: %w", err)
	}
	tok := TokenPrefix + base64.RawURLEncoding.EncodeToString(b[:])
	now := time.Now().UTC()
	r := tokenRecord{ExpiresAt: now.Add(ttl), Reusable: reusable, CreatedAt: now, Scope: scope}
	h := hashToken(tok)
	if err := ts.put(ctx, h, r); err != nil {
		return "", r, err
	}
	return messages.JoinToken{Secret: tok, Pin: ts.pin, URLs: urls}.String(), r, nil
}

func (ts *tokenStore) put(ctx context.Context, h string, r tokenRecord) error {
	b, _ := json.Marshal(r)
	if _, err := ts.kv.Put(ctx, h, b); err != nil {
		return fmt.Errorf("store token: %w", err)
	}
	ts.mu.Lock()
	ts.m[h] = r
	ts.mu.Unlock()
	return nil
}

// tokenHash is the hash the store keys token tok on (its secret part: a
// CA pin may follow after a "."); false for what cannot be a token. A
// relay sends the hub this, never the token (relay.go).
func tokenHash(tok string) (string, bool) {
	if !strings.HasPrefix(tok, TokenPrefix) || len(tok) > 128 {
		return "", false
	}
	tok, _, _ = strings.Cut(tok, ".")
	return hashToken(tok), true
}

// valid reports whether tok may be used now, its hash and when it expires.
func (ts *tokenStore) valid(tok string) (string, time.Time, bool) {
	h, ok := tokenHash(tok)
	if !ok {
		return "", time.Time{}, false
	}
	exp, ok := ts.validHash(h)
	return h, exp, ok
}

// validHash reports whether the token with hash h may be used now, and
// when it expires.
func (ts *tokenStore) validHash(h string) (time.Time, bool) {
	ts.mu.RLock()
	r, ok := ts.m[h]
	ts.mu.RUnlock()
	return r.ExpiresAt, ok && usable(r, time.Now())
}

// expiry is when the token with hash h expires (zero if unknown).
func (ts *tokenStore) expiry(h string) time.Time {
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	return ts.m[h].ExpiresAt
}

// enrolled reports whether the unexpired token with hash h enrolled node.
func (ts *tokenStore) enrolled(h, node string, now time.Time) bool {
	ts.mu.RLock()
	defer ts.mu.RUnlock()
	r, ok := ts.m[h]
	return ok && h != "" && now.Before(r.ExpiresAt) && slices.Contains(r.UsedBy, node)
}

// record returns the token with hash h if it may be used now.
func (ts *tokenStore) record(h string) (tokenRecord, error) {
	ts.mu.RLock()
	r, ok := ts.m[h]
	ts.mu.RUnlock()
	if !ok || !usable(r, time.Now()) {
		return r, errTokenSpent
	}
	return r, nil
}

func usable(r tokenRecord, now time.Time) bool {
	return now.Before(r.ExpiresAt) && (r.Reusable || !r.Used)
}

var errTokenSpent = errors.New("join token expired or already used: create a new one with `controller token create`")

// consume marks a token used by node; single-use tokens then stop working.
// It returns a function that gives the token back, for an enrollment that
// fails after the token was claimed: a refused enrollment must not burn it.
func (ts *tokenStore) consume(ctx context.Context, h, node string) (undo func(context.Context), err error) {
	ts.mu.Lock()
	r, ok := ts.m[h]
	if !ok || !usable(r, time.Now()) {
		ts.mu.Unlock()
		return nil, errTokenSpent
	}
	before := r
	r.Used = true
	if len(r.UsedBy) < 100 {
		r.UsedBy = append(slices.Clip(r.UsedBy), node)
	}
	ts.m[h] = r // claim it before the write so a concurrent enrollment fails
	ts.mu.Unlock()
	undo = func(ctx context.Context) {
		ts.mu.Lock()
		ts.m[h] = before
		ts.mu.Unlock()
		ts.put(ctx, h, before)
	}
	if err := ts.put(ctx, h, r); err != nil {
		undo(ctx)
		return nil, err
	}
	return undo, nil
}

// prune drops tokens that expired more than a day ago.
func (ts *tokenStore) prune(ctx context.Context) {
	cutoff := time.Now().Add(-24 * time.Hour)
	ts.mu.Lock()
	var old []string
	for h, r := range ts.m {
		if r.ExpiresAt.Before(cutoff) {
			old = append(old, h)
			delete(ts.m, h)
		}
	}
	ts.mu.Unlock()
	for _, h := range old {
		ts.kv.Delete(ctx, h)
	}
}

// joinURLs are the URLs a new join token carries: every controller agents
// can dial. In a cluster the server's connect URLs list every peer's
// client address (their --advertise, if given); alone, the controller's
// own. On the tailnet it is the controller's MagicDNS name. A controller
// listening on every interface without --advertise does not know which
// address agents reach it at, so its tokens carry none and agents need
// --controller.
func (c *Controller) joinURLs() []string {
	scheme := "nats://"
	if cu, err := url.Parse(c.ns.ClientURL()); err == nil && cu.Scheme == "tls" {
		scheme = "tls://"
	}
	if c.tr != nil && c.tr.node != nil {
		if c.opts.Advertise != "" {
			return []string{c.opts.Advertise}
		}
		return []string{"nats://" + net.JoinHostPort(c.opts.Tailnet.Hostname, strconv.Itoa(c.tr.port))}
	}
	var urls []string
	add := func(hp string) {
		host, _, err := net.SplitHostPort(hp)
		if err != nil {
			return
		}
		if ip := net.ParseIP(host); ip != nil && ip.IsUnspecified() {
			return
		}
		u := scheme + hp
		if !slices.Contains(urls, u) {
			urls = append(urls, u)
		}
	}
	if c.opts.Advertise != "" {
		if u, err := url.Parse(c.opts.Advertise); err == nil {
			add(u.Host)
		}
	}
	if v, err := c.ns.Varz(nil); err == nil {
		for _, hp := range v.ClientConnectURLs {
			add(hp)
		}
	}
	if len(urls) == 0 {
		if u, err := url.Parse(c.ns.ClientURL()); err == nil {
			add(u.Host)
		}
	}
	if len(urls) > messages.MaxJoinTokenURLs {
		urls = urls[:messages.MaxJoinTokenURLs]
	}
	return urls
}
