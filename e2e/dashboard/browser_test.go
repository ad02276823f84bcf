package dashboard

import (
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/chromedp/cdproto/cdp"
	"github.com/chromedp/cdproto/network"
	"github.com/chromedp/chromedp"
)

// browser is one headless Chromium tab, 1280×800.
type browser struct {
	t     *testing.T
	ctx   context.Context
	shots string
}

// shotsDir is where screenshots go: $MGN_DASHBOARD_SHOTS, or the test's
// temp dir.
func shotsDir(t *testing.T) string {
	if d := os.Getenv("MGN_DASHBOARD_SHOTS"); d != "" {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
		return d
	}
	return t.TempDir()
}

func newBrowser(t *testing.T, path string) *browser {
	t.Helper()
	opts := append(chromedp.DefaultExecAllocatorOptions[:], chromedp.ExecPath(path), chromedp.NoSandbox,
		chromedp.WindowSize(1280, 800), chromedp.UserDataDir(filepath.Join(t.TempDir(), "chromium")))
	actx, cancelA := chromedp.NewExecAllocator(context.Background(), opts...)
	ctx, cancelC := chromedp.NewContext(actx)
	t.Cleanup(func() { cancelC(); cancelA() })
	// The first call starts the browser and lives as long as ctx: no
	// timeout on it.
	if err := chromedp.Do(ctx, chromedp.EmulateViewport(1280, 800)); err != nil {
		testSkipOrFail(t, err)
	}
	return &browser{t: t, ctx: ctx, shots: shotsDir(t)}
}

func testSkipOrFail(t *testing.T, err error) {
	t.Helper()
	t.Fatalf("start chromium: %v", err)
}

func (b *browser) do(d time.Duration, steps ...chromedp.Action[chromedp.Void]) error {
	ctx, cancel := context.WithTimeout(b.ctx, d)
	defer cancel()
	return chromedp.Do(ctx, steps...)
}

func (b *browser) must(steps ...chromedp.Action[chromedp.Void]) {
	b.t.Helper()
	if err := b.do(30*time.Second, steps...); err != nil {
		b.t.Fatalf("browser: %v", err)
	}
}

// open navigates to url and waits for the page's live part.
func (b *browser) open(url string) {
	b.t.Helper()
	b.must(chromedp.Navigate(url), chromedp.WaitReady(chromedp.CSS("#live")))
}

// eval evaluates a JavaScript expression in the page.
func eval[T any](b *browser, expr string) T {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	v, err := chromedp.Run(ctx, chromedp.Evaluate[T](expr))
	if err != nil {
		b.t.Fatalf("evaluate %s: %v", expr, err)
	}
	return v
}

// waitFor polls expr in the page until it is truthy, up to d; on time out
// the test fails with what the page shows.
func (b *browser) waitFor(what, expr string, d time.Duration) time.Duration {
	b.t.Helper()
	start := time.Now()
	deadline := start.Add(d)
	for {
		// A navigation under way ends a poll early: poll again then.
		left := time.Until(deadline)
		ctx, cancel := context.WithTimeout(b.ctx, left+5*time.Second)
		_, err := chromedp.Run(ctx, chromedp.Poll[chromedp.Void](expr, chromedp.WithPollingTimeout(left), chromedp.WithPollingInterval(25*time.Millisecond)))
		cancel()
		if err == nil {
			return time.Since(start)
		}
		if time.Now().After(deadline) {
			text, _ := chromedp.Run(b.ctx, chromedp.Evaluate[string](`document.body ? document.body.innerText : ""`))
			b.t.Fatalf("%s: not within %s (%v); the page shows:\n%s", what, d, err, text)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// html is the whole document as the browser has it now.
func (b *browser) html() string {
	return eval[string](b, `document.documentElement.outerHTML`)
}

// shot saves a 1280×800 screenshot of the viewport as name.png.
func (b *browser) shot(name string) {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 20*time.Second)
	defer cancel()
	png, err := chromedp.Run(ctx, chromedp.CaptureScreenshot())
	if err != nil {
		b.t.Fatalf("screenshot %s: %v", name, err)
	}
	p := filepath.Join(b.shots, name+".png")
	if err := os.WriteFile(p, png, 0o644); err != nil {
		b.t.Fatal(err)
	}
	b.t.Logf("screenshot %s", p)
}

// cookies are the browser's cookies for the current page.
func (b *browser) cookies() []*network.Cookie {
	b.t.Helper()
	ctx, cancel := context.WithTimeout(b.ctx, 10*time.Second)
	defer cancel()
	res, err := chromedp.Run(ctx, func(ctx context.Context, t *chromedp.Target) (network.GetCookiesResult, error) {
		return cdp.Call(ctx, t, network.GetCookies, network.GetCookiesParams{})
	})
	if err != nil {
		b.t.Fatalf("cookies: %v", err)
	}
	return res.Cookies
}
