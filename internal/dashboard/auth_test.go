package dashboard

import (
	"net/http"
	"net/http/httptest"
	"testing"
	"time"
)

func TestSignInLinkWorksOnceAndExpires(t *testing.T) {
	a := newAuth(time.Hour)
	now := time.Now()
	tok, exp := a.newLogin(10*time.Minute, now)
	if len(tok) != 43 || !exp.Equal(now.Add(10*time.Minute)) {
		t.Fatalf("token %q expires %v", tok, exp)
	}
	for k := range a.logins {
		if string(k[:]) == tok {
			t.Fatal("the token is kept in clear")
		}
	}
	if !a.useLogin(tok, now) {
		t.Fatal("a fresh link refused")
	}
	if a.useLogin(tok, now) {
		t.Fatal("a link worked twice")
	}
	late, _ := a.newLogin(time.Minute, now)
	if a.useLogin(late, now.Add(time.Minute)) {
		t.Fatal("an expired link worked")
	}
	for _, bad := range []string{"", "x", string(make([]byte, 200))} {
		if a.useLogin(bad, now) {
			t.Fatalf("%q worked", bad)
		}
	}
}

func TestSessionsAndCSRF(t *testing.T) {
	a := newAuth(time.Hour)
	now := time.Now()
	id, s := a.newSession(now)
	req := httptest.NewRequest(http.MethodGet, "/", nil)
	if a.session(req, now) != nil {
		t.Fatal("a session without a cookie")
	}
	req.AddCookie(&http.Cookie{Name: sessionCookie, Value: id})
	if got := a.session(req, now); got != s {
		t.Fatal("the session is not found by its cookie")
	}
	if a.session(req, now.Add(time.Hour)) != nil {
		t.Fatal("an expired session is still open")
	}
	if s.csrfOK("") || s.csrfOK(s.csrf+"x") || !s.csrfOK(s.csrf) {
		t.Fatal("CSRF check")
	}
	other := httptest.NewRequest(http.MethodGet, "/", nil)
	other.AddCookie(&http.Cookie{Name: sessionCookie, Value: id + "x"})
	if a.session(other, now) != nil {
		t.Fatal("a forged cookie opened a session")
	}
}

func TestPruneBoundsWhatIsKept(t *testing.T) {
	a := newAuth(time.Hour)
	now := time.Now()
	for i := 0; i < 3*maxLogins; i++ {
		a.newLogin(time.Duration(i+1)*time.Second, now)
	}
	if len(a.logins) > maxLogins {
		t.Fatalf("%d links kept, at most %d", len(a.logins), maxLogins)
	}
	for i := 0; i < maxSessions+10; i++ {
		a.newSession(now)
	}
	if len(a.sessions) > maxSessions {
		t.Fatalf("%d sessions kept", len(a.sessions))
	}
}

func TestHubCoalescesAndBounds(t *testing.T) {
	h := newHub(20*time.Millisecond, 2)
	ch, ok := h.subscribe()
	if !ok {
		t.Fatal("subscribe")
	}
	if _, ok := h.subscribe(); !ok {
		t.Fatal("second subscribe")
	}
	if _, ok := h.subscribe(); ok {
		t.Fatal("a third stream over the bound of 2")
	}
	for i := 0; i < 1000; i++ {
		h.notify("node_state")
	}
	select {
	case seq := <-ch:
		if seq != 1 {
			t.Fatalf("seq %d", seq)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("no change event")
	}
	select {
	case seq := <-ch:
		t.Fatalf("1000 notices made a second event (%d)", seq)
	case <-time.After(100 * time.Millisecond):
	}
	h.unsubscribe(ch)
}
