package messages

import (
	"fmt"
	"strings"
	"time"
)

// APIDashboardLogin asks the controller for a one-time sign-in link to its
// web dashboard (`controller dashboard login`).
const APIDashboardLogin = "dashboard.login"

// Bounds of a dashboard sign-in link's life.
const (
	DefaultDashboardLoginTTL = 10 * time.Minute
	MaxDashboardLoginTTL     = time.Hour
	// MaxDashboardLoginToken bounds the token of a sign-in link (the
	// controller makes 43-character ones).
	MaxDashboardLoginToken = 128
)

// DashboardLoginRequest asks for a one-time sign-in link. TTL is how long
// the link stays usable (Go duration; default DefaultDashboardLoginTTL, at
// most MaxDashboardLoginTTL). The link works once; the session it opens
// lasts longer (the dashboard's own session lifetime).
type DashboardLoginRequest struct {
	V   int    `json:"v"`
	TTL string `json:"ttl,omitempty"`
}

// DashboardLoginReply carries the link and, for pasting into the sign-in
// page, its token. The controller keeps only the token's hash.
type DashboardLoginReply struct {
	V         int       `json:"v"`
	URL       string    `json:"url"`
	Token     string    `json:"token"`
	ExpiresAt time.Time `json:"expires_at"`
}

func (r *DashboardLoginRequest) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if r.TTL != "" {
		d, err := time.ParseDuration(r.TTL)
		if err != nil || d <= 0 {
			return fmt.Errorf("ttl: %q is not a positive duration", r.TTL)
		}
		if d > MaxDashboardLoginTTL {
			return fmt.Errorf("ttl: %s is longer than %s", d, MaxDashboardLoginTTL)
		}
	}
	return nil
}

// DashboardLoginTTL is the request's TTL with the default applied (the
// request has been validated).
func (r *DashboardLoginRequest) DashboardLoginTTL() time.Duration {
	if d, err := time.ParseDuration(r.TTL); err == nil && d > 0 {
		return d
	}
	return DefaultDashboardLoginTTL
}

func (r *DashboardLoginReply) Validate() error {
	if err := checkVersion(r.V); err != nil {
		return err
	}
	if len(r.Token) > MaxDashboardLoginToken || strings.ContainsAny(r.Token, " \t\r\n") {
		return fmt.Errorf("token: longer than %d bytes or with spaces", MaxDashboardLoginToken)
	}
	if len(r.URL) > 2048 {
		return fmt.Errorf("url: longer than 2048 bytes")
	}
	return nil
}
