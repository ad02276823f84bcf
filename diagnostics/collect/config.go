package collect

import (
	"context"
	"crypto/x509"
	"encoding/base64"
	"encoding/json"
	"encoding/pem"
	"fmt"
	"io"
	"math"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Config reports the node's configuration state with every value redacted:
// .env and .env.local in the working directory, ~/.guildnet/config.json,
// the kubeconfig's server and client certificate expiry, and the expiry and
// SANs of configured TLS certificates. Private keys, tokens and passwords
// are never read into the output; secret-named values show as [REDACTED].
//
// Metrics: env_files_present, guildnet_config_present, kubeconfig_present,
// kubeconfig_client_cert_days_left, tls_cert_days_left_min,
// tls_cert_missing_tailnet_ip (certificates without any of the node's
// tailnet IPs in their SANs, when the node has tailnet IPs).
// Settings: KUBECONFIG (default ~/.guildnet/kubeconfig), METAGN_TLS_CERTS
// (comma-separated PEM files).
type Config struct{}

func (Config) Name() string { return "config" }

// ConfigData is the config section's detail.
type ConfigData struct {
	EnvFiles   []EnvFile   `json:"env_files"`
	GuildNet   *FileFields `json:"guildnet_config,omitempty"`
	Kubeconfig *KubeInfo   `json:"kubeconfig,omitempty"`
	Certs      []CertInfo  `json:"certs,omitempty"`
}

// EnvFile is one .env file, values redacted.
type EnvFile struct {
	Path     string     `json:"path"`
	Entries  []EnvEntry `json:"entries,omitempty"`
	Problems []string   `json:"problems,omitempty"`
}

// FileFields is a JSON config file's top-level fields, values redacted.
type FileFields struct {
	Path   string            `json:"path"`
	Fields map[string]string `json:"fields"`
}

// KubeInfo is what the kubeconfig says about where and as whom.
type KubeInfo struct {
	Path               string    `json:"path"`
	CurrentContext     string    `json:"current_context,omitempty"`
	Server             string    `json:"server,omitempty"`
	AuthMethod         string    `json:"auth_method,omitempty"` // client-certificate, token, exec, password, none
	ClientCertNotAfter time.Time `json:"client_cert_not_after,omitzero"`
}

// CertInfo describes one TLS certificate.
type CertInfo struct {
	Path     string    `json:"path"`
	Subject  string    `json:"subject,omitempty"`
	NotAfter time.Time `json:"not_after,omitzero"`
	DaysLeft float64   `json:"days_left"`
	DNSNames []string  `json:"dns_names,omitempty"`
	IPs      []string  `json:"ips,omitempty"`
	Note     string    `json:"note,omitempty"`
}

func (Config) Collect(ctx context.Context, env *Env) (Section, error) {
	var s Section
	var d ConfigData
	now := env.Now()

	present := 0
	for _, name := range []string{".env", ".env.local"} {
		p := filepath.Join(env.WorkDir, name)
		b, err := readBounded(p, env.Limits.ConfigFileBytes)
		if err != nil {
			if !os.IsNotExist(err) {
				addNote(&s, env, "%s: %v", p, err)
			}
			continue
		}
		present++
		entries, problems := ParseDotenv(string(b))
		for i := range entries {
			entries[i].Value = env.Redact.Value(entries[i].Key, entries[i].Value)
		}
		d.EnvFiles = append(d.EnvFiles, EnvFile{Path: p, Entries: entries, Problems: problems})
	}
	addMetric(&s, "env_files_present", float64(present))

	gp := filepath.Join(env.Home, ".guildnet", "config.json")
	if fields, err := jsonFields(gp, env.Limits.ConfigFileBytes); err == nil {
		for k, v := range fields {
			fields[k] = env.Redact.Value(k, v)
		}
		d.GuildNet = &FileFields{Path: gp, Fields: fields}
		addMetric(&s, "guildnet_config_present", 1)
	} else {
		addMetric(&s, "guildnet_config_present", 0)
		if !os.IsNotExist(err) {
			addNote(&s, env, "%s: %v", gp, err)
		}
	}

	kp := kubeconfigPath(env)
	if ki, err := readKubeconfig(kp, env.Limits.ConfigFileBytes); err != nil {
		addMetric(&s, "kubeconfig_present", 0)
		if !os.IsNotExist(err) {
			addNote(&s, env, "kubeconfig %s: %v", kp, err)
		} else {
			addNote(&s, env, "kubeconfig %s: not present", kp)
		}
	} else {
		addMetric(&s, "kubeconfig_present", 1)
		ki.Server = env.Redact.String(ki.Server)
		if !ki.ClientCertNotAfter.IsZero() {
			addMetric(&s, "kubeconfig_client_cert_days_left", days(ki.ClientCertNotAfter.Sub(now)))
		}
		d.Kubeconfig = ki
	}

	tailnet := env.TailnetIPs
	if tailnet == nil {
		tailnet = tailnetIPs()
	}
	minDays, missing := math.Inf(1), 0
	for _, p := range env.list("METAGN_TLS_CERTS", "") {
		ci := readCert(p, now, env.Limits.ConfigFileBytes)
		if ci.Note == "" {
			minDays = min(minDays, ci.DaysLeft)
			if len(tailnet) > 0 && !slices.ContainsFunc(tailnet, func(ip string) bool { return slices.Contains(ci.IPs, ip) }) {
				missing++
				ci.Note = "none of the node's tailnet IPs (" + strings.Join(tailnet, ", ") + ") is in the SANs"
			}
		} else {
			addNote(&s, env, "tls cert %s: %s", p, ci.Note)
		}
		d.Certs = append(d.Certs, ci)
	}
	if !math.IsInf(minDays, 1) {
		addMetric(&s, "tls_cert_days_left_min", minDays)
	}
	if len(tailnet) > 0 && len(d.Certs) > 0 {
		addMetric(&s, "tls_cert_missing_tailnet_ip", float64(missing))
	}
	setData(&s, env, d)
	return s, ctx.Err()
}

func days(d time.Duration) float64 { return round1(d.Hours() / 24) }

func readBounded(path string, limit int64) ([]byte, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	fi, err := f.Stat()
	if err != nil {
		return nil, err
	}
	if !fi.Mode().IsRegular() {
		return nil, fmt.Errorf("not a regular file")
	}
	if fi.Size() > limit {
		return nil, fmt.Errorf("%d bytes: larger than the %d-byte limit", fi.Size(), limit)
	}
	return io.ReadAll(io.LimitReader(f, limit))
}

// jsonFields reads a JSON object's top-level fields as strings.
func jsonFields(path string, limit int64) (map[string]string, error) {
	b, err := readBounded(path, limit)
	if err != nil {
		return nil, err
	}
	var m map[string]json.RawMessage
	if err := json.Unmarshal(b, &m); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	out := make(map[string]string, len(m))
	for k, raw := range m {
		var str string
		if json.Unmarshal(raw, &str) == nil {
			out[k] = str
		} else {
			out[k] = string(raw)
		}
	}
	return out, nil
}

func kubeconfigPath(env *Env) string {
	if p := env.setting("KUBECONFIG", ""); p != "" {
		return strings.Split(p, string(os.PathListSeparator))[0]
	}
	return filepath.Join(env.Home, ".guildnet", "kubeconfig")
}

// kubeconfig is the part of a kubeconfig this package reads.
type kubeconfig struct {
	CurrentContext string `yaml:"current-context"`
	Clusters       []struct {
		Name    string `yaml:"name"`
		Cluster struct {
			Server string `yaml:"server"`
		} `yaml:"cluster"`
	} `yaml:"clusters"`
	Contexts []struct {
		Name    string `yaml:"name"`
		Context struct {
			Cluster string `yaml:"cluster"`
			User    string `yaml:"user"`
		} `yaml:"context"`
	} `yaml:"contexts"`
	Users []struct {
		Name string `yaml:"name"`
		User struct {
			ClientCertificateData string `yaml:"client-certificate-data"`
			ClientCertificate     string `yaml:"client-certificate"`
			ClientKeyData         string `yaml:"client-key-data"`
			Token                 string `yaml:"token"`
			Password              string `yaml:"password"`
			Exec                  any    `yaml:"exec"`
		} `yaml:"user"`
	} `yaml:"users"`
}

func parseKubeconfig(b []byte) (*kubeconfig, error) {
	var kc kubeconfig
	if err := yaml.Unmarshal(b, &kc); err != nil {
		return nil, fmt.Errorf("parse: %w", err)
	}
	return &kc, nil
}

func readKubeconfig(path string, limit int64) (*KubeInfo, error) {
	b, err := readBounded(path, limit)
	if err != nil {
		return nil, err
	}
	kc, err := parseKubeconfig(b)
	if err != nil {
		return nil, err
	}
	ki := &KubeInfo{Path: path, CurrentContext: kc.CurrentContext, AuthMethod: "none"}
	clusterName, userName := "", ""
	for _, c := range kc.Contexts {
		if c.Name == kc.CurrentContext || kc.CurrentContext == "" {
			clusterName, userName = c.Context.Cluster, c.Context.User
			break
		}
	}
	for _, c := range kc.Clusters {
		if c.Name == clusterName || clusterName == "" {
			ki.Server = c.Cluster.Server
			break
		}
	}
	for _, u := range kc.Users {
		if u.Name != userName && userName != "" {
			continue
		}
		var certPEM []byte
		switch {
		case u.User.ClientCertificateData != "":
			ki.AuthMethod = "client-certificate"
			certPEM, _ = base64.StdEncoding.DecodeString(u.User.ClientCertificateData)
		case u.User.ClientCertificate != "":
			ki.AuthMethod = "client-certificate"
			certPEM, _ = readBounded(u.User.ClientCertificate, limit)
		case u.User.Token != "":
			ki.AuthMethod = "token"
		case u.User.Exec != nil:
			ki.AuthMethod = "exec"
		case u.User.Password != "":
			ki.AuthMethod = "password"
		}
		if c, err := firstCert(certPEM); err == nil {
			ki.ClientCertNotAfter = c.NotAfter.UTC()
		}
		break
	}
	return ki, nil
}

func firstCert(b []byte) (*x509.Certificate, error) {
	for len(b) > 0 {
		var blk *pem.Block
		blk, b = pem.Decode(b)
		if blk == nil {
			break
		}
		if blk.Type == "CERTIFICATE" {
			return x509.ParseCertificate(blk.Bytes)
		}
	}
	return nil, fmt.Errorf("no PEM certificate found")
}

func readCert(path string, now time.Time, limit int64) CertInfo {
	ci := CertInfo{Path: path}
	b, err := readBounded(path, limit)
	if err != nil {
		ci.Note = "unreadable: " + err.Error()
		return ci
	}
	c, err := firstCert(b)
	if err != nil {
		ci.Note = err.Error()
		return ci
	}
	ci.Subject = c.Subject.String()
	ci.NotAfter = c.NotAfter.UTC()
	ci.DaysLeft = days(c.NotAfter.Sub(now))
	ci.DNSNames = c.DNSNames
	for _, ip := range c.IPAddresses {
		ci.IPs = append(ci.IPs, ip.String())
	}
	return ci
}

// secretValues finds the secret values in the node's configuration files
// so that the redactor can scrub them wherever else they appear (logs,
// error messages): .env entries and config.json fields with secret names,
// and the kubeconfig's tokens, passwords and key data.
func secretValues(env *Env) []string {
	var out []string
	for _, name := range []string{".env", ".env.local"} {
		b, err := readBounded(filepath.Join(env.WorkDir, name), env.Limits.ConfigFileBytes)
		if err != nil {
			continue
		}
		entries, _ := ParseDotenv(string(b))
		for _, e := range entries {
			if isSecretKey(e.Key) {
				out = append(out, e.Value)
			}
		}
	}
	if fields, err := jsonFields(filepath.Join(env.Home, ".guildnet", "config.json"), env.Limits.ConfigFileBytes); err == nil {
		for k, v := range fields {
			if isSecretKey(k) {
				out = append(out, v)
			}
		}
	}
	if b, err := readBounded(kubeconfigPath(env), env.Limits.ConfigFileBytes); err == nil {
		if kc, err := parseKubeconfig(b); err == nil {
			for _, u := range kc.Users {
				out = append(out, u.User.ClientKeyData, u.User.Token, u.User.Password)
			}
		}
	}
	return out
}

// tailnetIPs lists the node's addresses in Tailscale's ranges.
func tailnetIPs() []string {
	_, v4, _ := net.ParseCIDR("100.64.0.0/10")
	_, v6, _ := net.ParseCIDR("fd7a:115c:a1e0::/48")
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		return nil
	}
	var out []string
	for _, a := range addrs {
		if ipn, ok := a.(*net.IPNet); ok && (v4.Contains(ipn.IP) || v6.Contains(ipn.IP)) {
			out = append(out, ipn.IP.String())
		}
	}
	return out
}
