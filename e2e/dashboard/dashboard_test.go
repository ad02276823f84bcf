package dashboard

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"

	"github.com/guildnet/metaguildnet/messages"
)

// TestDashboard drives the dashboard in Chromium against real agents and
// the test world: every node shown, a fault knob turning a layer's cell
// unhealthy with its finding and fix, a killed agent's cells turning
// unknown, "diagnose now" after sign-in (and 403 without a session or
// without the CSRF token), no planted secret on any page, and the page
// coming back live after a controller restart. It writes a screenshot of
// each page.
func TestDashboard(t *testing.T) {
	path := chromium(t)
	w := newWorld(t)
	w.StartAgent("n1", "alpha", "controlplane", nil)
	w.StartAgent("n2", "alpha", "worker", nil)
	w.StartAgent("n3", "beta", "controlplane", nil)
	w.waitOnline("n1", "n2", "n3")
	if r := w.verifyUntil(messages.Healthy, 60*time.Second); r.OverallStatus != messages.Healthy {
		t.Fatalf("the world is %s before any fault", r.OverallStatus)
	}
	base := "http://" + w.Opts.HTTP
	b := newBrowser(t, path)
	liveness := w.Opts.HeartbeatInterval * 6 // the controller's default --offline-after
	var pages []string                       // every page's HTML, for the secrets check

	cell := func(cluster, layer, status string) string {
		return fmt.Sprintf(`!!document.querySelector('tr[data-cluster=%q] td[data-layer=%q][data-status=%q]')`, cluster, layer, status)
	}

	t.Run("fleet page shows every node and cluster", func(t *testing.T) {
		b.open(base + "/")
		b.waitFor("live", `document.getElementById('conn').textContent === 'live'`, 10*time.Second)
		for _, n := range []string{"n1", "n2", "n3"} {
			b.waitFor(n+" online", fmt.Sprintf(`!!document.querySelector('tr[data-node=%q][data-state="online"]')`, n), 5*time.Second)
		}
		for _, c := range []string{"alpha", "beta"} {
			for _, l := range []string{"network", "host", "cluster", "database", "application"} {
				b.waitFor(c+" "+l+" healthy", cell(c, l, messages.Healthy), 5*time.Second)
			}
		}
		if got := eval[string](b, `document.querySelector('[data-count="total"]').textContent`); got != "3 nodes" {
			t.Fatalf("total: %q", got)
		}
		b.shot("fleet")
		pages = append(pages, b.html())
	})

	t.Run("a fault knob turns the layer unhealthy and its finding appears, without a reload", func(t *testing.T) {
		b.open(base + "/")
		b.must(chromedp.Evaluate[chromedp.Void](`window.__mgnNoReload = 42`))
		w.RDB.SetRefuse(true)
		w.verifyAsync() // as a sweep would
		took := b.waitFor("database unhealthy", cell("alpha", "database", messages.Unhealthy), 60*time.Second)
		b.waitFor("the finding", `document.getElementById('live').innerText.includes('RethinkDB connection refused')`, 10*time.Second)
		text := eval[string](b, `document.getElementById('live').innerText`)
		if !strings.Contains(text, "→ Connect through the Service") || !strings.Contains(text, "docs/TROUBLESHOOTING.md#") {
			t.Fatalf("the finding has no fix on the page:\n%s", text)
		}
		title := eval[string](b, `document.querySelector('tr[data-cluster="alpha"] td[data-layer="database"] a').title`)
		if !strings.Contains(title, "rethinkdb_tcp") {
			t.Errorf("the cell's reason %q does not name the failing check", title)
		}
		if eval[int](b, `window.__mgnNoReload || 0`) != 42 {
			t.Fatal("the page reloaded")
		}
		t.Logf("database cell unhealthy %s after the knob (verification included)", took.Round(time.Millisecond))
		b.shot("fleet-fault")
		pages = append(pages, b.html())
	})

	t.Run("cluster page", func(t *testing.T) {
		b.open(base + "/cluster?name=alpha")
		b.waitFor("timeline", `document.querySelectorAll('.strip .seg.st-unhealthy').length > 0`, 10*time.Second)
		b.waitFor("plots", `document.querySelectorAll('.plots polyline').length > 0`, 10*time.Second)
		for _, n := range []string{"n1", "n2"} {
			b.waitFor(n, fmt.Sprintf(`!!document.querySelector('tr[data-node=%q] td[data-layer="host"] a[href*="/node?name="]')`, n), 5*time.Second)
		}
		if eval[bool](b, `!!document.querySelector('tr[data-node="n3"]')`) {
			t.Error("beta's node on alpha's page")
		}
		b.shot("cluster")
		pages = append(pages, b.html())
		b.open(base + "/cluster?name=beta")
		pages = append(pages, b.html())
	})

	t.Run("runs page lists none yet", func(t *testing.T) {
		b.open(base + "/runs")
		b.waitFor("sections", `document.getElementById('live').innerText.includes('No setup runs yet') && document.getElementById('live').innerText.includes('No rollouts yet')`, 5*time.Second)
		b.shot("runs")
		pages = append(pages, b.html())
	})

	client := &http.Client{Timeout: 3 * time.Minute, CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	post := func(url string, cookie *network.Cookie, csrf string) (int, string) {
		t.Helper()
		req, err := http.NewRequest(http.MethodPost, url, nil)
		if err != nil {
			t.Fatal(err)
		}
		if cookie != nil {
			req.AddCookie(&http.Cookie{Name: cookie.Name, Value: cookie.Value})
		}
		if csrf != "" {
			req.Header.Set("X-CSRF-Token", csrf)
		}
		req.Header.Set("X-Partial", "1")
		resp, err := client.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		body, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		return resp.StatusCode, string(body)
	}

	var session *network.Cookie
	var csrf string
	t.Run("diagnose now needs a session and the CSRF token", func(t *testing.T) {
		if code, body := post(base+"/node/diagnose?name=n1", nil, ""); code != http.StatusForbidden {
			t.Fatalf("without a session: %d %s", code, body)
		}
		b.open(base + "/node?name=n1")
		if eval[bool](b, `!!document.getElementById('diagnose-now')`) {
			t.Fatal("a diagnose button before sign-in")
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		login, err := w.Cli.DashboardLogin(ctx, "")
		cancel()
		if err != nil {
			t.Fatal(err)
		}
		b.open(login.URL)
		b.shot("login")
		b.must(chromedp.Click(chromedp.CSS("#sign-in")))
		b.waitFor("signed in", `location.pathname === "/" && !!document.querySelector('form[action="/logout"]')`, 10*time.Second)
		for _, c := range b.cookies() {
			if c.Name == "mgn_session" {
				session = c
			}
		}
		if session == nil || !session.HTTPOnly || session.SameSite != network.CookieSameSiteStrict {
			t.Fatalf("session cookie %+v: want HttpOnly, SameSite=Strict", session)
		}
		// A sign-in link works once.
		resp, err := http.PostForm(base+"/login", map[string][]string{"token": {login.Token}})
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusForbidden {
			t.Fatalf("a used sign-in link: %d, want 403", resp.StatusCode)
		}
		b.open(base + "/node?name=n1")
		csrf = eval[string](b, `document.querySelector('meta[name="csrf-token"]').content`)
		if code, body := post(base+"/node/diagnose?name=n1", session, ""); code != http.StatusForbidden {
			t.Fatalf("a session without the CSRF token: %d %s", code, body)
		}
		if code, body := post(base+"/node/diagnose?name=n1", session, "x"+csrf); code != http.StatusForbidden {
			t.Fatalf("a session with a wrong CSRF token: %d %s", code, body)
		}
		if code, body := post(base+"/node/diagnose?name=n1", nil, csrf); code != http.StatusForbidden {
			t.Fatalf("the CSRF token without a session: %d %s", code, body)
		}
		b.must(chromedp.Click(chromedp.CSS("#diagnose-now")))
		b.waitFor("the diagnosis", `!!document.querySelector('#diag-result .diagnosis')`, 2*time.Minute)
		text := eval[string](b, `document.getElementById('diag-result').innerText`)
		if !strings.Contains(text, "RethinkDB connection refused") || !strings.Contains(text, "→ ") {
			t.Fatalf("the diagnosis does not name the cause and its fix:\n%s", text)
		}
		b.must(chromedp.Evaluate[chromedp.Void](`window.scrollTo(0, 0)`))
		b.shot("node")
		b.must(chromedp.Evaluate[chromedp.Void](`document.getElementById('h-diag').scrollIntoView()`))
		b.shot("node-diagnosis")
		pages = append(pages, b.html())
		for _, n := range []string{"n2", "n3"} {
			b.open(base + "/node?name=" + n)
			pages = append(pages, b.html())
		}
	})

	t.Run("keyboard reaches the cells and diagnose now", func(t *testing.T) {
		b.open(base + "/node?name=n1")
		reached := map[string]bool{}
		for i := 0; i < 200 && !reached["diagnose-now"]; i++ {
			b.must(chromedp.KeyEvent("\t"))
			id := eval[string](b, `(function (e) { return e.id || (e.closest('[data-layer]') ? 'layer' : e.tagName) })(document.activeElement)`)
			reached[id] = true
		}
		if !reached["diagnose-now"] || !reached["A"] {
			t.Fatalf("tabbing reached %v, not the diagnose button", reached)
		}
		b.open(base + "/")
		reached = map[string]bool{}
		for i := 0; i < 60 && !reached["layer"]; i++ {
			b.must(chromedp.KeyEvent("\t"))
			reached[eval[string](b, `document.activeElement.closest('td[data-layer]') ? 'layer' : ''`)] = true
		}
		if !reached["layer"] {
			t.Fatal("tabbing never reached a cluster's layer cell")
		}
	})

	t.Run("a killed agent's cells turn unknown without a reload", func(t *testing.T) {
		b.open(base + "/")
		b.waitFor("live", `document.getElementById('conn').textContent === 'live'`, 10*time.Second)
		b.must(chromedp.Evaluate[chromedp.Void](`window.__mgnNoReload = 7`))
		w.StopAgent("n3")
		took := b.waitFor("n3 offline", `!!document.querySelector('tr[data-node="n3"][data-state="offline"] td[data-layer="network"][data-status="unknown"]')`, liveness+10*time.Second)
		if eval[int](b, `window.__mgnNoReload || 0`) != 7 {
			t.Fatal("the page reloaded")
		}
		t.Logf("n3 shown offline %s after its agent stopped (offline after %s)", took.Round(time.Millisecond), liveness)
		if got := eval[string](b, `document.querySelector('[data-count="offline"]').textContent`); !strings.Contains(got, "1 offline") {
			t.Errorf("offline count %q", got)
		}
		pages = append(pages, b.html())
	})

	t.Run("the page comes back live after a controller restart", func(t *testing.T) {
		b.open(base + "/")
		b.must(chromedp.Evaluate[chromedp.Void](`window.__mgnNoReload = 9`))
		w.StopController()
		b.waitFor("disconnected", `document.getElementById('conn').textContent !== 'live'`, 10*time.Second)
		w.StartController()
		b.waitFor("reconnected", `document.getElementById('conn').textContent === 'live'`, 20*time.Second)
		w.RDB.SetRefuse(false)
		w.verifyAsync()
		b.waitFor("database healthy again", cell("alpha", "database", messages.Healthy), 60*time.Second)
		if eval[int](b, `window.__mgnNoReload || 0`) != 9 {
			t.Fatal("the page reloaded")
		}
		pages = append(pages, b.html())
	})

	t.Run("no page holds a secret", func(t *testing.T) {
		if len(pages) < 8 {
			t.Fatalf("only %d pages collected", len(pages))
		}
		for _, s := range w.Secrets() {
			if len(s) < 8 {
				t.Fatalf("a secret too short to look for: %q", s)
			}
			for i, p := range pages {
				if strings.Contains(p, s) {
					t.Errorf("page %d holds a secret (%s…)", i, s[:4])
				}
			}
		}
	})

	t.Run("narrow window", func(t *testing.T) {
		b.must(chromedp.EmulateViewport(400, 800))
		defer b.must(chromedp.EmulateViewport(1280, 800))
		for _, p := range []string{"/", "/cluster?name=alpha", "/node?name=n1"} {
			b.open(base + p)
			if over := eval[int](b, `document.documentElement.scrollWidth - window.innerWidth`); over > 0 {
				t.Errorf("%s: %d px wider than a 400 px window", p, over)
			}
		}
	})
}
