package tailnet

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"go.uber.org/zap"
	"go.uber.org/zap/zaptest"

	"github.com/guildnet/metaguildnet/internal/agent"
	"github.com/guildnet/metaguildnet/internal/controller"
	"github.com/guildnet/metaguildnet/internal/ctlclient"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

const hb = 200 * time.Millisecond

func testCtx(t *testing.T, d time.Duration) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), d)
	t.Cleanup(cancel)
	return ctx
}

// shortDir is a temp dir with a short path (unix sockets allow ~100 bytes).
func shortDir(t *testing.T) string {
	d, err := os.MkdirTemp("", "tn")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(d) })
	return d
}

// tailnetUser makes a Headscale user and a reusable preauth key for it.
func tailnetUser(t *testing.T, ctx context.Context, h *testenv.Headscale, name string) (testenv.HeadscaleUser, string) {
	t.Helper()
	u, err := h.CreateUser(ctx, name)
	if err != nil {
		t.Fatal(err)
	}
	key, err := h.CreatePreAuthKey(ctx, u.ID, true, false, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	return u, key
}

// inProcAgent is a real agent in this process.
type inProcAgent struct {
	a    *agent.Agent
	stop func()
	err  chan error
}

func startAgent(t *testing.T, cfg agent.Config) *inProcAgent {
	t.Helper()
	if cfg.Log == nil {
		cfg.Log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named(cfg.Name)
	}
	if cfg.Journal == nil {
		cfg.Journal = agent.NewMemJournal()
	}
	a, err := agent.New(cfg)
	if err != nil {
		t.Fatalf("agent %s: %v", cfg.Name, err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	p := &inProcAgent{a: a, err: make(chan error, 1)}
	go func() { p.err <- a.Run(ctx) }()
	var once sync.Once
	p.stop = func() {
		once.Do(func() {
			cancel()
			select {
			case <-p.err:
			case <-time.After(20 * time.Second):
				t.Errorf("agent %s did not stop", cfg.Name)
			}
		})
	}
	t.Cleanup(p.stop)
	return p
}

func status(t *testing.T, cli *ctlclient.Client) messages.StatusReply {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	st, err := cli.Status(ctx)
	if err != nil {
		t.Logf("status: %v", err)
	}
	return st
}

func nodeState(st messages.StatusReply, name string) (messages.NodeStatus, bool) {
	for _, n := range st.Nodes {
		if n.Name == name {
			return n, true
		}
	}
	return messages.NodeStatus{}, false
}

func onlineCount(st messages.StatusReply, names ...string) int {
	k := 0
	for _, name := range names {
		if n, ok := nodeState(st, name); ok && n.State == messages.StateOnline {
			k++
		}
	}
	return k
}

// listeningTCP lists every TCP socket listening in this network namespace.
func listeningTCP(t *testing.T) []string {
	t.Helper()
	var out []string
	for _, f := range []string{"/proc/net/tcp", "/proc/net/tcp6"} {
		b, err := os.ReadFile(f)
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(bytes.NewReader(b))
		sc.Scan() // header
		for sc.Scan() {
			fs := strings.Fields(sc.Text())
			if len(fs) < 4 || fs[3] != "0A" { // 0A: LISTEN
				continue
			}
			hostHex, portHex, _ := strings.Cut(fs[1], ":")
			port, _ := strconv.ParseUint(portHex, 16, 16)
			raw, _ := hex.DecodeString(hostHex)
			// /proc prints each 32-bit word in host (little-endian) order.
			for i := 0; i+4 <= len(raw); i += 4 {
				raw[i], raw[i+1], raw[i+2], raw[i+3] = raw[i+3], raw[i+2], raw[i+1], raw[i]
			}
			ip := net.IP(raw)
			if ip.IsUnspecified() {
				ip = net.IPv4(127, 0, 0, 1)
				if len(raw) == 16 {
					ip = net.IPv6loopback
				}
			}
			out = append(out, net.JoinHostPort(ip.String(), strconv.Itoa(int(port))))
		}
	}
	return out
}

// natsAnswers reports whether a NATS server greets on addr (it sends INFO
// first, unprompted).
func natsAnswers(addr string) bool {
	c, err := net.DialTimeout("tcp", addr, time.Second)
	if err != nil {
		return false
	}
	defer c.Close()
	c.SetReadDeadline(time.Now().Add(700 * time.Millisecond))
	buf := make([]byte, 5)
	n, _ := c.Read(buf)
	return strings.HasPrefix(string(buf[:n]), "INFO")
}

// proc is a started binary, killed when the test ends.
type proc struct {
	cmd *exec.Cmd
	log *bytes.Buffer
	mu  sync.Mutex
}

type lockedBuf struct {
	mu *sync.Mutex
	b  *bytes.Buffer
}

func (l lockedBuf) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func startProc(t *testing.T, bin string, env []string, args ...string) *proc {
	t.Helper()
	p := &proc{log: &bytes.Buffer{}}
	cmd := exec.Command(filepath.Join(binaries(t), bin), args...)
	cmd.Stdout, cmd.Stderr = lockedBuf{&p.mu, p.log}, lockedBuf{&p.mu, p.log}
	cmd.Env = append(cleanEnv(), append([]string{"METAGN_LOG_FORMAT=console"}, env...)...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := cmd.Start(); err != nil {
		t.Fatalf("start %s: %v", bin, err)
	}
	p.cmd = cmd
	t.Cleanup(func() {
		p.kill()
		if t.Failed() {
			t.Logf("--- %s %s log:\n%s", bin, strings.Join(args, " "), p.output())
		}
	})
	return p
}

// cleanEnv is the environment without tailnet credentials: each process
// gets only what its test gives it.
func cleanEnv() []string {
	var out []string
	for _, kv := range os.Environ() {
		if strings.HasPrefix(kv, "TS_AUTHKEY=") || strings.HasPrefix(kv, "TS_LOGIN_SERVER=") || strings.HasPrefix(kv, "METAGN_") {
			continue
		}
		out = append(out, kv)
	}
	return out
}

func (p *proc) output() string {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.log.String()
}

func (p *proc) kill() {
	if p.cmd.ProcessState != nil {
		return
	}
	syscall.Kill(-p.cmd.Process.Pid, syscall.SIGKILL)
	p.cmd.Wait()
}

// cliJSON runs a controller subcommand and returns its stdout.
func cliRun(t *testing.T, args ...string) (string, int) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(binaries(t), "controller"), args...)
	cmd.Env = cleanEnv()
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	code := 0
	if ee, ok := err.(*exec.ExitError); ok {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatalf("controller %v: %v", args, err)
	}
	if code == 2 {
		t.Logf("controller %v: %s", args, errb.String())
	}
	return out.String(), code
}

func startController(t *testing.T, o controller.Options) (*controller.Controller, *ctlclient.Client) {
	t.Helper()
	if o.Log == nil {
		o.Log = zaptest.NewLogger(t, zaptest.Level(zap.WarnLevel)).Named("controller")
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = hb
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = -1
	}
	ctx, cancel := context.WithTimeout(context.Background(), 90*time.Second)
	defer cancel()
	t0 := time.Now()
	c, err := controller.Start(ctx, o)
	if err != nil {
		t.Fatalf("start controller: %v", err)
	}
	t.Logf("controller up in %v, nats %s", time.Since(t0).Round(time.Millisecond), c.Info().NATSURL)
	cli, err := ctlclient.Dial(o.DataDir)
	if err != nil {
		c.Close()
		t.Fatalf("dial the controller: %v", err)
	}
	t.Cleanup(func() { cli.Close(); c.Close() })
	return c, cli
}

func token(t *testing.T, cli *ctlclient.Client) string {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	tok, err := cli.TokenCreate(ctx, "1h", true, messages.TokenScope{})
	if err != nil {
		t.Fatal(err)
	}
	return tok.Token
}

func fmtFacts(f *messages.TailnetFacts) string {
	if f == nil {
		return "<nil>"
	}
	return fmt.Sprintf("%+v", *f)
}
