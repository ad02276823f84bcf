// Package tlspin is the controller's TLS outside the tailnet: a CA kept in
// the data dir (or a given certificate), a server certificate signed by
// it, and the pin an agent uses to trust exactly that CA. The pin travels
// in the join token (mgnt_SECRET.PIN), so an agent that holds a token
// needs nothing else to verify the controller.
package tlspin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/base64"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"os"
	"path/filepath"
	"time"
)

// Files under the data dir's tls directory.
const (
	caCertFile = "ca.pem"
	caKeyFile  = "ca.key"
)

// Pin is the base64url (unpadded) SHA-256 of a certificate's DER bytes.
func Pin(der []byte) string {
	h := sha256.Sum256(der)
	return base64.RawURLEncoding.EncodeToString(h[:])
}

// ValidPin reports whether pin looks like a [Pin].
func ValidPin(pin string) bool {
	b, err := base64.RawURLEncoding.DecodeString(pin)
	return err == nil && len(b) == sha256.Size
}

// Server is what the controller serves TLS with.
type Server struct {
	Config *tls.Config
	// Pin is the pin agents check: the CA's, or the top certificate of a
	// given chain.
	Pin string
	// CAFile is the CA certificate (PEM) the pin names, when there is one
	// on disk.
	CAFile string
}

// EnsureCA loads the CA in dir (creating it on the first start) and issues
// a fresh server certificate for hosts (names and IPs) signed by it.
func EnsureCA(dir string, hosts []string) (*Server, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("tls dir %s: %w", dir, err)
	}
	caCert, caKey, err := loadCA(dir)
	if errors.Is(err, fs.ErrNotExist) {
		caCert, caKey, err = createCA(dir)
	}
	if err != nil {
		return nil, err
	}
	leaf, err := issue(caCert, caKey, hosts)
	if err != nil {
		return nil, err
	}
	return &Server{
		Config: &tls.Config{Certificates: []tls.Certificate{leaf}, MinVersion: tls.VersionTLS12},
		Pin:    Pin(caCert.Raw),
		CAFile: filepath.Join(dir, caCertFile),
	}, nil
}

// LoadPair serves a given certificate chain and key; the pin is that of the
// last certificate in the chain file (the CA when the file carries it,
// else the certificate itself).
func LoadPair(certFile, keyFile string) (*Server, error) {
	pair, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("--tls-cert %s / --tls-key %s: %w", certFile, keyFile, err)
	}
	top := pair.Certificate[len(pair.Certificate)-1]
	return &Server{
		Config: &tls.Config{Certificates: []tls.Certificate{pair}, MinVersion: tls.VersionTLS12},
		Pin:    Pin(top),
	}, nil
}

func loadCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	cb, err := os.ReadFile(filepath.Join(dir, caCertFile))
	if err != nil {
		return nil, nil, err
	}
	kb, err := os.ReadFile(filepath.Join(dir, caKeyFile))
	if err != nil {
		return nil, nil, err
	}
	cblk, _ := pem.Decode(cb)
	kblk, _ := pem.Decode(kb)
	if cblk == nil || kblk == nil {
		return nil, nil, fmt.Errorf("tls CA in %s: not PEM", dir)
	}
	cert, err := x509.ParseCertificate(cblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("tls CA %s: %w", filepath.Join(dir, caCertFile), err)
	}
	key, err := x509.ParseECPrivateKey(kblk.Bytes)
	if err != nil {
		return nil, nil, fmt.Errorf("tls CA key %s: %w", filepath.Join(dir, caKeyFile), err)
	}
	return cert, key, nil
}

func createCA(dir string) (*x509.Certificate, *ecdsa.PrivateKey, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("tls CA key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: "MetaGuildNet controller CA", Organization: []string{"MetaGuildNet"}},
		NotBefore:             time.Now().Add(-time.Hour),
		NotAfter:              time.Now().AddDate(10, 0, 0),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, nil, fmt.Errorf("tls CA: %w", err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	if err := writeFile(filepath.Join(dir, caKeyFile), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600); err != nil {
		return nil, nil, err
	}
	if err := writeFile(filepath.Join(dir, caCertFile), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o644); err != nil {
		return nil, nil, err
	}
	cert, _ := x509.ParseCertificate(der)
	return cert, key, nil
}

func issue(ca *x509.Certificate, caKey *ecdsa.PrivateKey, hosts []string) (tls.Certificate, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls server key: %w", err)
	}
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: "mgn-controller"},
		NotBefore:    time.Now().Add(-time.Hour),
		NotAfter:     time.Now().AddDate(1, 0, 0),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth},
	}
	for _, h := range append([]string{"localhost", "127.0.0.1", "::1"}, hosts...) {
		if h == "" {
			continue
		}
		if ip := net.ParseIP(h); ip != nil {
			tmpl.IPAddresses = append(tmpl.IPAddresses, ip)
		} else {
			tmpl.DNSNames = append(tmpl.DNSNames, h)
		}
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		return tls.Certificate{}, fmt.Errorf("tls server certificate: %w", err)
	}
	// The chain carries the CA so that an agent holding only the pin can
	// find it.
	return tls.Certificate{Certificate: [][]byte{der, ca.Raw}, PrivateKey: key}, nil
}

func serial() *big.Int {
	n, _ := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 120))
	return n
}

func writeFile(path string, b []byte, mode os.FileMode) error {
	if err := os.WriteFile(path+".tmp", b, mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(path+".tmp", path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

// ErrNotPinned means the controller's certificate does not chain to the
// pinned CA.
var ErrNotPinned = errors.New("the controller's certificate is not from the pinned CA")

// ClientConfig trusts exactly the certificate pin names: the server's
// chain must contain it and the leaf must verify up to it (or be it). Host
// names are not checked: the pinned CA belongs to this controller alone,
// and agents dial it by whatever address reaches it.
func ClientConfig(pin string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // replaced by VerifyConnection below
		VerifyConnection: func(cs tls.ConnectionState) error {
			return VerifyChain(cs.PeerCertificates, pin)
		},
	}
}

// VerifyChain checks a presented chain against pin (see [ClientConfig]).
func VerifyChain(chain []*x509.Certificate, pin string) error {
	if len(chain) == 0 {
		return fmt.Errorf("%w: no certificate presented", ErrNotPinned)
	}
	var anchor *x509.Certificate
	for _, c := range chain {
		if Pin(c.Raw) == pin {
			anchor = c
			break
		}
	}
	if anchor == nil {
		return fmt.Errorf("%w (pin %s; presented %s)", ErrNotPinned, short(pin), short(Pin(chain[len(chain)-1].Raw)))
	}
	leaf := chain[0]
	if leaf == anchor {
		if time.Now().After(leaf.NotAfter) {
			return fmt.Errorf("controller certificate expired %s", leaf.NotAfter.Format(time.RFC3339))
		}
		return nil
	}
	roots := x509.NewCertPool()
	roots.AddCert(anchor)
	inter := x509.NewCertPool()
	for _, c := range chain[1:] {
		if c != anchor {
			inter.AddCert(c)
		}
	}
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter,
		KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}); err != nil {
		return fmt.Errorf("%w: %v", ErrNotPinned, err)
	}
	return nil
}

func short(pin string) string {
	if len(pin) > 12 {
		return pin[:12] + "…"
	}
	return pin
}
