package tlspin

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"math/big"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func chainOf(t *testing.T, s *Server) []*x509.Certificate {
	t.Helper()
	var out []*x509.Certificate
	for _, der := range s.Config.Certificates[0].Certificate {
		c, err := x509.ParseCertificate(der)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, c)
	}
	return out
}

func TestEnsureCAStableAndVerifies(t *testing.T) {
	dir := t.TempDir()
	a, err := EnsureCA(dir, []string{"guildnet-controller", "100.64.0.1"})
	if err != nil {
		t.Fatal(err)
	}
	b, err := EnsureCA(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	if a.Pin != b.Pin {
		t.Fatal("the CA changed across starts: pins in issued tokens would break")
	}
	other, err := EnsureCA(t.TempDir(), nil)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		chain []*x509.Certificate
		pin   string
		ok    bool
	}{
		{"own chain, own pin", chainOf(t, a), a.Pin, true},
		{"new leaf after restart", chainOf(t, b), a.Pin, true},
		{"other CA's chain", chainOf(t, other), a.Pin, false},
		{"leaf alone (CA not sent)", chainOf(t, a)[:1], a.Pin, false},
		{"our leaf with a forged CA appended", append(chainOf(t, other)[:1], chainOf(t, a)[1]), a.Pin, false},
		{"empty", nil, a.Pin, false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := VerifyChain(tt.chain, tt.pin)
			if (err == nil) != tt.ok {
				t.Fatalf("VerifyChain = %v, want ok=%v", err, tt.ok)
			}
			if err != nil && !errors.Is(err, ErrNotPinned) {
				t.Fatalf("error %v is not ErrNotPinned", err)
			}
		})
	}
	leaf := chainOf(t, a)[0]
	if len(leaf.DNSNames) == 0 || leaf.DNSNames[1] != "guildnet-controller" {
		t.Errorf("server certificate names: %v %v", leaf.DNSNames, leaf.IPAddresses)
	}
}

func TestLoadPairPinsTopOfChain(t *testing.T) {
	dir := t.TempDir()
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(7), Subject: pkix.Name{CommonName: "self"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(time.Hour),
		ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}, KeyUsage: x509.KeyUsageDigitalSignature}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		t.Fatal(err)
	}
	kder, _ := x509.MarshalECPrivateKey(key)
	cf, kf := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	os.WriteFile(cf, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}), 0o600)
	os.WriteFile(kf, pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: kder}), 0o600)
	s, err := LoadPair(cf, kf)
	if err != nil {
		t.Fatal(err)
	}
	if s.Pin != Pin(der) {
		t.Fatal("pin is not the given certificate's")
	}
	if err := VerifyChain(chainOf(t, s), s.Pin); err != nil {
		t.Fatalf("a self-signed given certificate pinned to itself: %v", err)
	}
	if _, err := LoadPair(cf, filepath.Join(dir, "missing")); err == nil {
		t.Fatal("LoadPair with a missing key succeeded")
	}
}

func TestValidPin(t *testing.T) {
	if ValidPin("PIN") || !ValidPin(Pin([]byte("x"))) {
		t.Error("ValidPin")
	}
}
