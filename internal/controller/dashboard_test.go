package controller_test

import (
	"bufio"
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"io"
	"math/big"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/messages"
)

// The dashboard on a real controller: sign-in links over the API, pages,
// refusals, and the event stream. The browser test (e2e/dashboard) drives
// it in Chromium against the test world.
func TestDashboardServesAndSignsIn(t *testing.T) {
	f := newFleet(t, nil)
	base := f.c.Info().HTTPURL
	if !strings.HasPrefix(base, "http://127.0.0.1:") {
		t.Fatalf("http url %q", base)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()

	// The event stream says hello at once, then "change" when a node
	// comes online.
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/events", nil)
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	if ct := resp.Header.Get("Content-Type"); ct != "text/event-stream" {
		t.Fatalf("content type %q", ct)
	}
	events := make(chan string, 16)
	go func() {
		sc := bufio.NewScanner(resp.Body)
		for sc.Scan() {
			if ev, ok := strings.CutPrefix(sc.Text(), "event: "); ok {
				events <- ev
			}
		}
		close(events)
	}()
	next := func(want string) {
		t.Helper()
		select {
		case ev := <-events:
			if ev != want {
				t.Fatalf("event %q, want %q", ev, want)
			}
		case <-ctx.Done():
			t.Fatalf("no %q event", want)
		}
	}
	next("hello")
	f.runAgent(f.agentCfg("n1", "a", f.token(false, "1h")))
	f.waitOnline("n1")
	next("change")

	get := func(path string) (int, string, http.Header) {
		t.Helper()
		resp, err := http.Get(base + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b), resp.Header
	}
	code, body, h := get("/")
	if code != 200 || !strings.Contains(body, `data-node="n1"`) || !strings.Contains(body, `data-cluster="a"`) {
		t.Fatalf("fleet page %d:\n%s", code, body)
	}
	if csp := h.Get("Content-Security-Policy"); !strings.Contains(csp, "script-src 'self'") || h.Get("Referrer-Policy") != "no-referrer" {
		t.Fatalf("headers %v", h)
	}
	if code, body, _ := get("/node?name=n1"); code != 200 || !strings.Contains(body, "Reading only") {
		t.Fatalf("node page %d:\n%s", code, body)
	}
	for _, p := range []string{"/node?name=nope", "/cluster?name=nope"} {
		if code, _, _ := get(p); code != http.StatusNotFound {
			t.Errorf("%s: %d", p, code)
		}
	}
	if code, _, _ := get("/static/app.js"); code != 200 {
		t.Errorf("app.js: %d", code)
	}

	// A one-time link over the API; acting needs the session and its
	// CSRF token.
	if _, err := f.cli.DashboardLogin(ctx, "2h"); err == nil || !strings.Contains(err.Error(), "ttl") {
		t.Fatalf("a 2h link: %v", err)
	}
	login, err := f.cli.DashboardLogin(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(login.URL, base+"/login?token=") || time.Until(login.ExpiresAt) > messages.DefaultDashboardLoginTTL {
		t.Fatalf("login %+v", login)
	}
	noFollow := &http.Client{CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err = noFollow.PostForm(base+"/login", url.Values{"token": {login.Token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	var sess *http.Cookie
	for _, c := range resp.Cookies() {
		if c.Name == "mgn_session" {
			sess = c
		}
	}
	if resp.StatusCode != http.StatusSeeOther || sess == nil || !sess.HttpOnly || sess.SameSite != http.SameSiteStrictMode || sess.Secure {
		t.Fatalf("sign-in: %d, cookie %+v", resp.StatusCode, sess)
	}
	post := func(path string, c *http.Cookie, csrf string) int {
		req, _ := http.NewRequest(http.MethodPost, base+path, nil)
		if c != nil {
			req.AddCookie(c)
		}
		if csrf != "" {
			req.Header.Set("X-CSRF-Token", csrf)
		}
		resp, err := noFollow.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	if code := post("/node/diagnose?name=n1", nil, ""); code != http.StatusForbidden {
		t.Fatalf("no session: %d", code)
	}
	if code := post("/node/diagnose?name=n1", sess, ""); code != http.StatusForbidden {
		t.Fatalf("no CSRF token: %d", code)
	}
	if code := post("/logout", sess, "wrong"); code != http.StatusForbidden {
		t.Fatalf("wrong CSRF token: %d", code)
	}
}

func TestDashboardRefusesPlainTextOffLoopback(t *testing.T) {
	for _, tc := range []struct {
		http, cert, key, want string
	}{
		{"0.0.0.0:0", "", "", "--http-tls-cert"},
		{"192.0.2.1:0", "", "", "not a loopback address"},
		{"127.0.0.1:0", "cert.pem", "", "go together"},
		{"tailnet:8222", "", "", "give --tailnet"},
		{"tailnet:x", "", "", "want tailnet or tailnet:PORT"},
	} {
		dir := t.TempDir()
		_, err := controller.Start(context.Background(), controller.Options{DataDir: filepath.Join(dir, "c"), Listen: "127.0.0.1:0",
			HTTP: tc.http, HTTPTLSCert: tc.cert, HTTPTLSKey: tc.key})
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("--http %s cert %q key %q: %v, want an error naming %q", tc.http, tc.cert, tc.key, err, tc.want)
		}
	}
}

// selfSigned writes a certificate for 127.0.0.1 and its key.
func selfSigned(t *testing.T, dir string) (certFile, keyFile string, pool *x509.CertPool) {
	t.Helper()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		t.Fatal(err)
	}
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "dashboard"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour), IPAddresses: []net.IP{net.ParseIP("127.0.0.1")}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kb, _ := x509.MarshalECPrivateKey(key)
	certFile, keyFile = filepath.Join(dir, "cert.pem"), filepath.Join(dir, "key.pem")
	os.WriteFile(certFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(keyFile, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kb}), 0o600)
	cert, _ := x509.ParseCertificate(der)
	pool = x509.NewCertPool()
	pool.AddCert(cert)
	return certFile, keyFile, pool
}

func TestDashboardOverTLS(t *testing.T) {
	dir := t.TempDir()
	certFile, keyFile, pool := selfSigned(t, dir)
	f := newFleet(t, func(o *controller.Options) { o.HTTPTLSCert, o.HTTPTLSKey = certFile, keyFile })
	base := f.c.Info().HTTPURL
	if !strings.HasPrefix(base, "https://127.0.0.1:") {
		t.Fatalf("http url %q", base)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	login, err := f.cli.DashboardLogin(ctx, "1m")
	if err != nil {
		t.Fatal(err)
	}
	c := &http.Client{Transport: &http.Transport{TLSClientConfig: &tls.Config{RootCAs: pool}},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }}
	resp, err := c.PostForm(base+"/login", url.Values{"token": {login.Token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if len(resp.Cookies()) != 1 || !resp.Cookies()[0].Secure {
		t.Fatalf("cookies over TLS %+v: want one, Secure", resp.Cookies())
	}
	if resp, err := c.Get(base + "/metrics"); err != nil || resp.StatusCode != 200 {
		t.Fatalf("/metrics over TLS: %v", err)
	} else {
		resp.Body.Close()
	}
}
