package checks

// The HTTP client setup the application and custom checks share.

import (
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net/http"
	"os"
)

// clientTLS is the TLS configuration of a check's HTTPS client: it trusts
// the CA certificates in the PEM file caFile (the system's roots when
// caFile is empty) and skips verification when insecure. origin names
// where caFile came from ("setting METAGN_HOSTAPP_CA", "ca"), for errors.
func clientTLS(caFile string, insecure bool, origin string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12, InsecureSkipVerify: insecure}
	if caFile == "" {
		return tc, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", origin, err)
	}
	tc.RootCAs = x509.NewCertPool()
	if !tc.RootCAs.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("%s: %s holds no PEM certificate", origin, caFile)
	}
	return tc, nil
}

// answerClient is an HTTP client over tr that does not follow redirects:
// for a check, a redirect is an answer.
func answerClient(tr *http.Transport) *http.Client {
	return &http.Client{
		Transport:     tr,
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}
