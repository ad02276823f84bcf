package main

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/poll"

	"github.com/guildnet/metaguildnet/internal/testenv"
)

// containerd takes the archive as it is written (`ctr images import`),
// names it, keeps the digest, and runs the binary as the entrypoint. Needs
// root, containerd, ctr and runc (Debian: containerd); skips without them.
// The container gets its own network namespace with nothing in it.
func TestContainerdImportsAndRunsTheImage(t *testing.T) {
	if os.Geteuid() != 0 {
		testenv.Skip(t, "containerd needs root")
	}
	for _, tool := range []string{"containerd", "ctr", "runc"} {
		if _, err := exec.LookPath(tool); err != nil {
			testenv.Skip(t, "%s not installed (make apt-deps installs it)", tool)
		}
	}
	ctx, cancel := context.WithTimeout(t.Context(), 3*time.Minute)
	defer cancel()
	dir := t.TempDir()

	// A small static program stands in for the agent: this is about the
	// image, not the binary.
	src := filepath.Join(dir, "main.go")
	if err := os.WriteFile(src, []byte("package main\n\nimport \"os\"\n\nfunc main() { os.Stdout.WriteString(\"hello from \" + os.Args[0] + \" \" + os.Getenv(\"PATH\") + \"\\n\") }\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	bin := filepath.Join(dir, "hello")
	build := exec.CommandContext(ctx, "go", "build", "-trimpath", "-o", bin, src)
	build.Env = append(os.Environ(), "CGO_ENABLED=0", "GO111MODULE=off")
	if out, err := build.CombinedOutput(); err != nil {
		t.Fatalf("build: %v\n%s", err, out)
	}
	b, err := os.ReadFile(bin)
	if err != nil {
		t.Fatal(err)
	}
	digest, _ := writeImage(t, dir, testStamp, b)
	archive := filepath.Join(dir, "image.tar")

	sock := filepath.Join(dir, "containerd.sock")
	cfg := filepath.Join(dir, "config.toml")
	if err := os.WriteFile(cfg, []byte(`version = 2
root = "`+filepath.Join(dir, "root")+`"
state = "`+filepath.Join(dir, "state")+`"
disabled_plugins = ["io.containerd.grpc.v1.cri"]
[grpc]
  address = "`+sock+`"
[ttrpc]
  address = "`+sock+`.ttrpc"
`), 0o644); err != nil {
		t.Fatal(err)
	}
	log, err := os.Create(filepath.Join(dir, "containerd.log"))
	if err != nil {
		t.Fatal(err)
	}
	defer log.Close()
	daemon := exec.Command("containerd", "--config", cfg)
	daemon.Stdout, daemon.Stderr = log, log
	daemon.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	if err := daemon.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		_ = syscall.Kill(-daemon.Process.Pid, syscall.SIGTERM)
		done := make(chan struct{})
		go func() { daemon.Wait(); close(done) }()
		select {
		case <-done:
		case <-time.After(10 * time.Second):
			_ = syscall.Kill(-daemon.Process.Pid, syscall.SIGKILL)
			<-done
		}
	})
	ctr := func(args ...string) string {
		t.Helper()
		out, err := exec.CommandContext(ctx, "ctr", append([]string{"--address", sock, "-n", "mgn-test"}, args...)...).CombinedOutput()
		if err != nil {
			logText, _ := os.ReadFile(log.Name())
			t.Fatalf("ctr %s: %v\n%s\ncontainerd log:\n%s", strings.Join(args, " "), err, out, logText)
		}
		return string(out)
	}
	poll.Until(t, 30*time.Second, "containerd to answer on "+sock, func() bool {
		return exec.CommandContext(ctx, "ctr", "--address", sock, "version").Run() == nil
	})

	ctr("images", "import", archive)
	ls := ctr("images", "ls")
	ref := defaultRepo + "agent:" + testStamp.Version
	if !strings.Contains(ls, ref) || !strings.Contains(ls, digest) {
		t.Fatalf("containerd lists\n%s\nwant %s at %s", ls, ref, digest)
	}
	out := ctr("run", "--rm", ref, "mgn-image-test")
	if want := "hello from /usr/local/bin/agent /usr/local/bin\n"; out != want {
		t.Fatalf("the container printed %q, want %q", out, want)
	}
}
