package testenv

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// Versions of the servers the test world runs. hack/build-testenv.sh builds
// the same versions into the same directories.
const (
	KubeVersion      = "v1.37.2"
	HeadscaleVersion = "v0.29.1"
)

// CacheEnv names the environment variable that overrides where the built
// binaries live (the cache root shared with hack/build-testenv.sh).
const CacheEnv = "MGN_TESTENV_CACHE"

// CacheDir returns the cache root: $MGN_TESTENV_CACHE, else
// $XDG_CACHE_HOME/metaguildnet/testenv, else ~/.cache/metaguildnet/testenv.
func CacheDir() string {
	if d := os.Getenv(CacheEnv); d != "" {
		return d
	}
	base := os.Getenv("XDG_CACHE_HOME")
	if base == "" {
		home, err := os.UserHomeDir()
		if err != nil {
			home = os.TempDir()
		}
		base = filepath.Join(home, ".cache")
	}
	return filepath.Join(base, "metaguildnet", "testenv")
}

// EtcdPath is the etcd binary built by `make testenv` (inside [CacheDir]).
func EtcdPath() string { return filepath.Join(CacheDir(), "k8s-"+KubeVersion, "etcd") }

// KubeAPIServerPath is the kube-apiserver binary built by `make testenv`.
func KubeAPIServerPath() string {
	return filepath.Join(CacheDir(), "k8s-"+KubeVersion, "kube-apiserver")
}

// HeadscalePath is the headscale binary built by `make testenv`.
func HeadscalePath() string {
	return filepath.Join(CacheDir(), "headscale-"+HeadscaleVersion, "headscale")
}

// Need names a part of the world a test needs, for [Require].
type Need int

const (
	// NeedKube: etcd and kube-apiserver binaries.
	NeedKube Need = iota + 1
	// NeedHeadscale: the headscale binary.
	NeedHeadscale
	// NeedNetNS: the process runs inside a loopback-only network namespace
	// (see [MainInNetNS]), which tsnet requires.
	NeedNetNS
	// NeedControlPlane: kube-controller-manager, kube-scheduler and KWOK
	// (the live control plane, [Kube.StartControlPlane]).
	NeedControlPlane
	// NeedTailscaled: the tailscaled binary ([StartTailscaled]).
	NeedTailscaled
)

func (n Need) String() string {
	switch n {
	case NeedKube:
		return "kube-apiserver and etcd"
	case NeedHeadscale:
		return "headscale"
	case NeedNetNS:
		return "a loopback-only network namespace"
	case NeedControlPlane:
		return "kube-controller-manager, kube-scheduler and kwok"
	case NeedTailscaled:
		return "tailscaled"
	}
	return fmt.Sprintf("Need(%d)", int(n))
}

// Missing reports why what is not available, or "" when it is.
func Missing(what ...Need) string {
	for _, n := range what {
		switch n {
		case NeedKube:
			for _, p := range []string{EtcdPath(), KubeAPIServerPath()} {
				if !isExecutable(p) {
					return fmt.Sprintf("%s not built (%s missing)", n, p)
				}
			}
		case NeedControlPlane:
			for _, p := range []string{KubeControllerManagerPath(), KubeSchedulerPath(), KWOKPath()} {
				if !isExecutable(p) {
					return fmt.Sprintf("%s not built (%s missing)", n, p)
				}
			}
		case NeedHeadscale:
			if p := HeadscalePath(); !isExecutable(p) {
				return fmt.Sprintf("%s not built (%s missing)", n, p)
			}
		case NeedTailscaled:
			if p := TailscaledPath(); !isExecutable(p) {
				return fmt.Sprintf("%s not built (%s missing)", n, p)
			}
		case NeedNetNS:
			if err := checkNetNS(); err != nil {
				return fmt.Sprintf("not inside %s: %v", n, err)
			}
		}
	}
	return ""
}

// InCI reports whether CI=true, where a missing environment is a failure.
func InCI() bool { return os.Getenv("CI") == "true" }

// Require skips t when part of the world is not available, with a message
// saying how to get it; with CI=true it fails t instead, so CI can never
// pass by skipping.
func Require(t testing.TB, what ...Need) {
	t.Helper()
	why := Missing(what...)
	if why == "" {
		return
	}
	msg := fmt.Sprintf("testenv: %s; run `make testenv` then `make test` (cache %s, override with %s)", why, CacheDir(), CacheEnv)
	if slices.Contains(what, NeedNetNS) && Missing(NeedKube, NeedHeadscale) == "" {
		msg = fmt.Sprintf("testenv: %s; the test package must start through testenv.MainInNetNS (or RunInNetNS), which needs root to make the namespace", why)
	}
	Skip(t, "%s", msg)
}

// Skip skips t because something it needs (a binary, a kernel feature, a
// file of the host) is missing, with a message saying what; with CI=true it
// fails t instead, so CI can never pass by skipping a capability it was
// meant to test.
func Skip(t testing.TB, format string, a ...any) {
	t.Helper()
	msg := fmt.Sprintf(format, a...)
	if InCI() {
		t.Fatal(msg + " [CI=true: a missing test environment is a failure]")
	}
	t.Skip(msg)
}

func isExecutable(p string) bool {
	st, err := os.Stat(p)
	return err == nil && st.Mode().IsRegular() && st.Mode()&0o111 != 0
}
