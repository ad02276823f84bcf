package dashboard

import (
	"context"
	"io"
	"net/http"
	"net/url"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/poll"
	"github.com/guildnet/metaguildnet/internal/testenv"
)

// --http tailnet:PORT serves the dashboard on the controller's tailnet
// address only (its tsnet node, real Headscale): a peer reaches it, and
// reading there needs a sign-in.
func TestDashboardOnTheTailnet(t *testing.T) {
	testenv.Require(t, testenv.NeedHeadscale, testenv.NeedNetNS)
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()
	hs, err := testenv.StartHeadscale(ctx, testenv.HeadscaleOptions{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(hs.Close)
	u, err := hs.CreateUser(ctx, "guildnet")
	if err != nil {
		t.Fatal(err)
	}
	key, err := hs.CreatePreAuthKey(ctx, u.ID, true, false, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	c, err := controller.Start(ctx, controller.Options{DataDir: filepath.Join(dir, "controller"), Listen: "127.0.0.1:0",
		HTTP: "tailnet:8222", SweepInterval: -1, Log: zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)),
		Tailnet: controller.TailnetOptions{Enabled: true, AuthKey: key, ControlURL: hs.URL(), Hostname: "dash-controller"}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	base := c.Info().HTTPURL
	if !strings.HasPrefix(base, "http://100.64.") || !strings.HasSuffix(base, ":8222") {
		t.Fatalf("dashboard at %q, want the controller's tailnet address", base)
	}
	peer, _, err := testenv.StartTSNet(ctx, testenv.TSNetOptions{ControlURL: hs.URL(), AuthKey: key, Hostname: "operator", Dir: filepath.Join(dir, "ts-operator")})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { peer.Close() })
	client := peer.HTTPClient()
	client.Timeout = 30 * time.Second
	client.CheckRedirect = func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse }
	var resp *http.Response
	// The peer's path to the controller comes up.
	poll.UntilOK(t, 60*time.Second, "the dashboard over the tailnet", func() error {
		resp, err = client.Get(base + "/")
		return err
	})
	resp.Body.Close()
	if resp.StatusCode != http.StatusSeeOther || resp.Header.Get("Location") != "/login" {
		t.Fatalf("reading without a session on the tailnet: %d to %q, want 303 to /login", resp.StatusCode, resp.Header.Get("Location"))
	}
	cli, err := ctlclient.Dial(filepath.Join(dir, "controller"))
	if err != nil {
		t.Fatal(err)
	}
	defer cli.Close()
	login, err := cli.DashboardLogin(ctx, "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(login.URL, base+"/login?token=") {
		t.Fatalf("sign-in link %q", login.URL)
	}
	resp, err = client.PostForm(base+"/login", url.Values{"token": {login.Token}})
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	cookies := resp.Cookies()
	if resp.StatusCode != http.StatusSeeOther || len(cookies) != 1 {
		t.Fatalf("sign-in over the tailnet: %d, cookies %+v", resp.StatusCode, cookies)
	}
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, base+"/", nil)
	req.AddCookie(cookies[0])
	resp, err = client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	body, _ := io.ReadAll(resp.Body)
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK || !strings.Contains(string(body), "Clusters × layers") {
		t.Fatalf("the fleet page after sign-in: %d\n%s", resp.StatusCode, body)
	}
}
