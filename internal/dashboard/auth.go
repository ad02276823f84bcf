package dashboard

import (
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"net/http"
	"sync"
	"time"

	"go.uber.org/zap"
)

// Sign-in: `controller dashboard login` asks the controller (over NATS,
// verb dashboard.login) for a one-time token; the controller keeps its
// SHA-256 only, for a short time, and forgets it on first use. Using it
// opens a session: a random id in an HttpOnly, SameSite=Strict cookie
// (Secure over TLS), kept hashed as well, with its own CSRF token that
// every action must carry. Both live in memory: a controller restart signs
// everyone out.

const (
	sessionCookie = "mgn_session"
	// maxLogins and maxSessions bound what unused links and open sessions
	// can hold; the oldest go first.
	maxLogins   = 64
	maxSessions = 1024
)

type session struct {
	csrf    string
	expires time.Time
}

func (s *session) csrfOK(tok string) bool {
	return tok != "" && subtle.ConstantTimeCompare([]byte(tok), []byte(s.csrf)) == 1
}

type auth struct {
	ttl      time.Duration
	mu       sync.Mutex
	logins   map[[32]byte]time.Time // token hash -> expiry
	sessions map[[32]byte]*session  // session id hash -> session
}

func newAuth(ttl time.Duration) *auth {
	return &auth{ttl: ttl, logins: map[[32]byte]time.Time{}, sessions: map[[32]byte]*session{}}
}

func randomToken() string {
	var b [32]byte
	rand.Read(b[:])
	return base64.RawURLEncoding.EncodeToString(b[:])
}

func (a *auth) newLogin(ttl time.Duration, now time.Time) (string, time.Time) {
	tok := randomToken()
	exp := now.Add(ttl)
	a.mu.Lock()
	defer a.mu.Unlock()
	prune(a.logins, now, maxLogins, func(t time.Time) time.Time { return t })
	a.logins[sha256.Sum256([]byte(tok))] = exp
	return tok, exp
}

// useLogin spends a sign-in token: true once, while it is valid.
func (a *auth) useLogin(tok string, now time.Time) bool {
	if tok == "" || len(tok) > 128 {
		return false
	}
	h := sha256.Sum256([]byte(tok))
	a.mu.Lock()
	defer a.mu.Unlock()
	exp, ok := a.logins[h]
	delete(a.logins, h)
	return ok && now.Before(exp)
}

// newSession opens a session and returns its cookie value.
func (a *auth) newSession(now time.Time) (string, *session) {
	id := randomToken()
	s := &session{csrf: randomToken(), expires: now.Add(a.ttl)}
	a.mu.Lock()
	defer a.mu.Unlock()
	prune(a.sessions, now, maxSessions, func(s *session) time.Time { return s.expires })
	a.sessions[sha256.Sum256([]byte(id))] = s
	return id, s
}

// session returns r's session, or nil.
func (a *auth) session(r *http.Request, now time.Time) *session {
	c, err := r.Cookie(sessionCookie)
	if err != nil || c.Value == "" || len(c.Value) > 128 {
		return nil
	}
	h := sha256.Sum256([]byte(c.Value))
	a.mu.Lock()
	defer a.mu.Unlock()
	s := a.sessions[h]
	if s == nil {
		return nil
	}
	if !now.Before(s.expires) {
		delete(a.sessions, h)
		return nil
	}
	return s
}

func (a *auth) endSession(r *http.Request) {
	if c, err := r.Cookie(sessionCookie); err == nil {
		a.mu.Lock()
		delete(a.sessions, sha256.Sum256([]byte(c.Value)))
		a.mu.Unlock()
	}
}

// prune drops expired entries, then the soonest to expire until there is
// room for one more.
func prune[V any](m map[[32]byte]V, now time.Time, max int, exp func(V) time.Time) {
	for k, v := range m {
		if !now.Before(exp(v)) {
			delete(m, k)
		}
	}
	for len(m) >= max {
		var first [32]byte
		var at time.Time
		for k, v := range m {
			if at.IsZero() || exp(v).Before(at) {
				first, at = k, exp(v)
			}
		}
		delete(m, first)
	}
}

func (s *Server) setSessionCookie(w http.ResponseWriter, value string, maxAge int) {
	http.SetCookie(w, &http.Cookie{Name: sessionCookie, Value: value, Path: "/", MaxAge: maxAge,
		HttpOnly: true, SameSite: http.SameSiteStrictMode, Secure: s.o.Secure})
}

func (s *Server) loginPage(w http.ResponseWriter, r *http.Request) {
	s.render(w, r, "login", page{Title: "Sign in", Data: map[string]any{"Token": r.URL.Query().Get("token")},
		Session: s.auth.session(r, time.Now())})
}

func (s *Server) loginPost(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, 4<<10)
	if !s.auth.useLogin(r.PostFormValue("token"), time.Now()) {
		s.forbidden(w, r, "this sign-in link is unknown, expired or already used: run `controller dashboard login` for a new one")
		return
	}
	id, _ := s.auth.newSession(time.Now())
	s.setSessionCookie(w, id, int(s.o.SessionTTL.Seconds()))
	s.log.Info("dashboard: operator signed in", zap.String("remote", r.RemoteAddr))
	http.Redirect(w, r, "/", http.StatusSeeOther)
}

func (s *Server) logout(w http.ResponseWriter, r *http.Request, _ *session) {
	s.auth.endSession(r)
	s.setSessionCookie(w, "", -1)
	http.Redirect(w, r, "/", http.StatusSeeOther)
}
