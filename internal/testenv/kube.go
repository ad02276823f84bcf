package testenv

import (
	"context"
	"crypto/rand"
	"crypto/rsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/pem"
	"fmt"
	"net/http"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
)

// KubeOptions configures [StartKube]. The zero value is ready to use.
type KubeOptions struct {
	// Dir holds etcd's data, certificates, logs and the kubeconfig. Empty:
	// a new temporary directory, removed by Stop. A given Dir is kept.
	Dir string
	// ReadyTimeout bounds the wait for /readyz (default 90s).
	ReadyTimeout time.Duration
	// ServiceCIDR is the Service IP range (default GuildNet's 10.96.0.0/12).
	ServiceCIDR string
}

// Kube is a running etcd + kube-apiserver pair on 127.0.0.1.
type Kube struct {
	dir, kubeconfig, token, url string
	ownDir                      bool
	etcd, apiserver             *process
	cfg                         *rest.Config
	// ReadyIn is how long kube-apiserver took from start to /readyz.
	ReadyIn time.Duration
}

// StartKube starts etcd and kube-apiserver on random free ports on
// 127.0.0.1, waits until /readyz answers, and writes a kubeconfig with an
// admin token (group system:masters). Call Stop when done.
func StartKube(ctx context.Context, opts KubeOptions) (k *Kube, err error) {
	if why := Missing(NeedKube); why != "" {
		return nil, fmt.Errorf("start kube: %s (run `make testenv`)", why)
	}
	if opts.ReadyTimeout == 0 {
		opts.ReadyTimeout = 90 * time.Second
	}
	if opts.ServiceCIDR == "" {
		opts.ServiceCIDR = "10.96.0.0/12"
	}
	k = &Kube{dir: opts.Dir}
	if k.dir == "" {
		if k.dir, err = os.MkdirTemp("", "mgn-kube-"); err != nil {
			return nil, fmt.Errorf("start kube: temp dir: %w", err)
		}
		k.ownDir = true
	} else if err := os.MkdirAll(k.dir, 0o755); err != nil {
		return nil, fmt.Errorf("start kube: dir: %w", err)
	}
	started := k // the named result is nil once an error is returned
	defer func() {
		if err != nil {
			started.Stop()
		}
	}()

	// A port picked free can be taken by someone else before the server
	// binds it: start again on new ports when that is why it failed.
	for attempt := 1; ; attempt++ {
		err = k.startOnce(ctx, opts)
		if err == nil || attempt == 3 || !strings.Contains(err.Error(), "address already in use") {
			break
		}
		k.apiserver.stop(time.Second)
		k.etcd.stop(time.Second)
		_ = os.RemoveAll(filepath.Join(k.dir, "etcd"))
	}
	if err != nil {
		return nil, err
	}
	return k, nil
}

func (k *Kube) startOnce(ctx context.Context, opts KubeOptions) error {
	ports, err := freePorts(3)
	if err != nil {
		return fmt.Errorf("start kube: %w", err)
	}
	etcdClient, etcdPeer, apiPort := ports[0], ports[1], ports[2]
	if err := k.startEtcd(ctx, etcdClient, etcdPeer); err != nil {
		return fmt.Errorf("start etcd: %w", err)
	}
	if err := k.startAPIServer(ctx, opts, etcdClient, apiPort); err != nil {
		return fmt.Errorf("start kube-apiserver: %w", err)
	}
	if err := k.writeKubeconfig(); err != nil {
		return fmt.Errorf("start kube: %w", err)
	}
	return nil
}

func (k *Kube) startEtcd(ctx context.Context, clientPort, peerPort int) error {
	client := "http://" + hostPort(clientPort)
	peer := "http://" + hostPort(peerPort)
	args := []string{
		"--name=testenv",
		"--data-dir=" + filepath.Join(k.dir, "etcd"),
		"--listen-client-urls=" + client,
		"--advertise-client-urls=" + client,
		"--listen-peer-urls=" + peer,
		"--initial-advertise-peer-urls=" + peer,
		"--initial-cluster=testenv=" + peer,
		"--unsafe-no-fsync",
		"--log-level=warn",
	}
	p, err := startProcess("etcd", filepath.Join(k.dir, "etcd.log"), EtcdPath(), args, nil)
	if err != nil {
		return err
	}
	k.etcd = p
	wctx, cancel := context.WithTimeout(ctx, 30*time.Second)
	defer cancel()
	return waitHTTP(wctx, p, http.DefaultClient, client+"/health", "", `"health":"true"`)
}

func (k *Kube) startAPIServer(ctx context.Context, opts KubeOptions, etcdPort, port int) error {
	certDir := filepath.Join(k.dir, "certs")
	if err := os.MkdirAll(certDir, 0o700); err != nil {
		return fmt.Errorf("cert dir: %w", err)
	}
	tok := make([]byte, 16)
	if _, err := rand.Read(tok); err != nil {
		return fmt.Errorf("token: %w", err)
	}
	k.token = hex.EncodeToString(tok)
	tokenFile := filepath.Join(k.dir, "tokens.csv")
	if err := os.WriteFile(tokenFile, []byte(k.token+`,admin,admin,"system:masters"`+"\n"), 0o600); err != nil {
		return fmt.Errorf("token file: %w", err)
	}
	saKey := filepath.Join(k.dir, "sa.key")
	if err := writeRSAKey(saKey); err != nil {
		return fmt.Errorf("service account key: %w", err)
	}
	args := []string{
		"--etcd-servers=http://" + hostPort(etcdPort),
		"--bind-address=127.0.0.1",
		"--advertise-address=127.0.0.1",
		"--secure-port=" + strconv.Itoa(port),
		"--cert-dir=" + certDir,
		"--endpoint-reconciler-type=none",
		"--disable-admission-plugins=ServiceAccount",
		"--token-auth-file=" + tokenFile,
		"--authorization-mode=RBAC",
		"--service-account-key-file=" + saKey,
		"--service-account-signing-key-file=" + saKey,
		"--service-account-issuer=https://kubernetes.default.svc.cluster.local",
		"--service-cluster-ip-range=" + opts.ServiceCIDR,
		"--allow-privileged=true",
	}
	p, err := startProcess("kube-apiserver", filepath.Join(k.dir, "kube-apiserver.log"), KubeAPIServerPath(), args, nil)
	if err != nil {
		return err
	}
	k.apiserver = p
	k.url = "https://" + hostPort(port)
	start := time.Now()
	wctx, cancel := context.WithTimeout(ctx, opts.ReadyTimeout)
	defer cancel()
	// The serving certificate is generated by the server itself in
	// --cert-dir; the test client skips verifying it (loopback only).
	hc := &http.Client{Timeout: 5 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{InsecureSkipVerify: true}, //nolint:gosec // self-signed loopback test server
	}}
	if err := waitHTTP(wctx, p, hc, k.url+"/readyz", k.token, ""); err != nil {
		return err
	}
	k.ReadyIn = time.Since(start)
	return nil
}

func writeRSAKey(path string) error {
	key, err := rsa.GenerateKey(rand.Reader, 2048)
	if err != nil {
		return err
	}
	b := pem.EncodeToMemory(&pem.Block{Type: "RSA PRIVATE KEY", Bytes: x509.MarshalPKCS1PrivateKey(key)})
	return os.WriteFile(path, b, 0o600)
}

func (k *Kube) writeKubeconfig() error {
	k.kubeconfig = filepath.Join(k.dir, "kubeconfig")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["testenv"] = &clientcmdapi.Cluster{Server: k.url, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["admin"] = &clientcmdapi.AuthInfo{Token: k.token}
	cfg.Contexts["testenv"] = &clientcmdapi.Context{Cluster: "testenv", AuthInfo: "admin", Namespace: "default"}
	cfg.CurrentContext = "testenv"
	if err := clientcmd.WriteToFile(*cfg, k.kubeconfig); err != nil {
		return fmt.Errorf("write kubeconfig: %w", err)
	}
	k.cfg = &rest.Config{
		Host:            k.url,
		BearerToken:     k.token,
		TLSClientConfig: rest.TLSClientConfig{Insecure: true},
		QPS:             200,
		Burst:           400,
	}
	return nil
}

// RESTConfig returns a copy of the admin client configuration.
func (k *Kube) RESTConfig() *rest.Config { return rest.CopyConfig(k.cfg) }

// KubeconfigPath is the kubeconfig file (token auth, context "testenv").
func (k *Kube) KubeconfigPath() string { return k.kubeconfig }

// URL is the API server's https URL on 127.0.0.1.
func (k *Kube) URL() string { return k.url }

// Dir is the directory holding data, logs and the kubeconfig.
func (k *Kube) Dir() string { return k.dir }

// Stop ends kube-apiserver and etcd (whole process groups) and removes the
// directory when StartKube made it. Safe to call more than once.
func (k *Kube) Stop() {
	if k == nil {
		return
	}
	k.apiserver.stop(5 * time.Second)
	k.etcd.stop(2 * time.Second)
	if k.ownDir && k.dir != "" {
		_ = os.RemoveAll(k.dir)
	}
}
