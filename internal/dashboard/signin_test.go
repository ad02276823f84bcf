package dashboard

import (
	"context"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// untouched is a Source that must never be read: every request here is
// refused before the dashboard reads state.
type untouched struct{ t *testing.T }

func (u untouched) fail() {
	u.t.Helper()
	u.t.Error("state read by a request that should have been refused")
}
func (u untouched) Fleet(time.Time) messages.StatusReply {
	u.fail()
	return messages.StatusReply{}
}
func (u untouched) LastChecks(string) []messages.CheckResult { u.fail(); return nil }
func (u untouched) Findings() []messages.Finding             { u.fail(); return nil }
func (u untouched) Reports(context.Context, time.Time) ([]ReportRef, error) {
	u.fail()
	return nil, nil
}
func (u untouched) Report(context.Context, string) (messages.Report, error) {
	u.fail()
	return messages.Report{}, nil
}
func (u untouched) Diagnose(context.Context, string) (messages.DiagnoseResult, error) {
	u.fail()
	return messages.DiagnoseResult{}, nil
}
func (u untouched) NodeTasks(context.Context, string, int) ([]messages.TaskReport, error) {
	u.fail()
	return nil, nil
}
func (u untouched) SetupRuns(context.Context) ([]messages.SetupRun, error) { u.fail(); return nil, nil }
func (u untouched) Rollouts(context.Context) ([]Rollout, error)            { u.fail(); return nil, nil }

// Off loopback (RequireSignIn) reading needs a session too: pages send the
// visitor to sign in, the event stream is refused, and the sign-in page
// itself reads nothing.
func TestRequireSignInGuardsReading(t *testing.T) {
	s, err := New(Options{Source: untouched{t}, RequireSignIn: true, Secure: true})
	if err != nil {
		t.Fatal(err)
	}
	defer s.Close()
	for _, p := range []string{"/", "/cluster?name=a", "/node?name=n1", "/runs"} {
		rec := httptest.NewRecorder()
		s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, p, nil))
		if rec.Code != http.StatusSeeOther || rec.Header().Get("Location") != "/login" {
			t.Errorf("%s: %d to %q, want 303 to /login", p, rec.Code, rec.Header().Get("Location"))
		}
	}
	rec := httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/events", nil))
	if rec.Code != http.StatusForbidden {
		t.Errorf("/events: %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodPost, "/node/diagnose?name=n1", nil))
	if rec.Code != http.StatusForbidden {
		t.Errorf("diagnose: %d", rec.Code)
	}
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, httptest.NewRequest(http.MethodGet, "/login", nil))
	if rec.Code != http.StatusOK || !strings.Contains(rec.Body.String(), `name="token"`) {
		t.Errorf("/login: %d", rec.Code)
	}
	// A link signs in once, with a Secure cookie over TLS.
	tok, _ := s.NewLogin(time.Minute)
	form := url.Values{"token": {tok}}.Encode()
	req := httptest.NewRequest(http.MethodPost, "/login", strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	cookies := rec.Result().Cookies()
	if rec.Code != http.StatusSeeOther || len(cookies) != 1 || !cookies[0].Secure || !cookies[0].HttpOnly || cookies[0].SameSite != http.SameSiteStrictMode {
		t.Fatalf("sign-in: %d, cookies %+v", rec.Code, cookies)
	}
	req = httptest.NewRequest(http.MethodPost, "/login", strings.NewReader(form))
	req.Header.Set("Content-Type", "application/x-www-form-urlencoded")
	rec = httptest.NewRecorder()
	s.ServeHTTP(rec, req)
	if rec.Code != http.StatusForbidden {
		t.Fatalf("a link used twice: %d", rec.Code)
	}
}
