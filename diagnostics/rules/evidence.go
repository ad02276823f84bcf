package rules

import (
	"fmt"
	"net/netip"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"github.com/guildnet/metaguildnet/messages"
)

// Evidence classes: what kind of error a check's message, a log line or a
// node's state shows. Rules match on them (a check condition's `class:`)
// and state them for every finding they explain (an `explains` entry's
// `evidence:`), so a symptom is folded under a cause only when its own
// evidence fits that cause, and titles and suggestions follow the error
// actually observed.
const (
	ClassRefused  = "refused"  // connection refused
	ClassTimeout  = "timeout"  // i/o timeout, deadline exceeded
	ClassNoRoute  = "no_route" // no route to host, network unreachable
	ClassReset    = "reset"    // connection reset
	ClassDNS      = "dns"      // no such host, server misbehaving
	ClassTLS      = "tls"      // x509, certificate, tls:
	ClassConfig   = "config"   // a setting unset or malformed (never folded under a cause)
	ClassOffline  = "offline"  // the node did not answer
	ClassBlocked  = "blocked"  // a check skipped behind one of the cause's checks
	ClassState    = "state"    // an observed state (NotReady, Pending, missing) rather than an error reaching something
	ClassNetwork  = "network"  // group: refused, timeout, no_route, reset
	ClassHTTP4xx  = "http_4xx" // group: any HTTP 4xx answer
	ClassHTTP5xx  = "http_5xx" // group: any HTTP 5xx answer
	classHTTPPref = "http_"    // http_NNN: that HTTP status was answered
)

// networkClasses are the errors of a path that does not carry traffic.
var networkClasses = []string{ClassRefused, ClassTimeout, ClassNoRoute, ClassReset}

// classLabels say a class in a title ({error}).
var classLabels = map[string]string{
	ClassRefused: "connection refused", ClassTimeout: "timed out", ClassNoRoute: "no route",
	ClassReset: "connection reset", ClassDNS: "name not resolved", ClassTLS: "TLS error",
	ClassConfig: "not configured", ClassOffline: "offline",
}

var (
	reRefused = lazyRE(`(?i)connection refused`)
	reTimeout = lazyRE(`(?i)i/o timeout|deadline exceeded|timed out|timeout awaiting|client\.timeout|gateway timeout`)
	reNoRoute = lazyRE(`(?i)no route to host|network is unreachable|host is unreachable`)
	reReset   = lazyRE(`(?i)connection reset|broken pipe`)
	reDNS     = lazyRE(`(?i)no such host|server misbehaving|cannot resolve`)
	reTLS     = lazyRE(`(?i)x509|certificate|\btls:`)
	reConfig  = lazyRE(`(?i)^not configured: |required \(.*\) but not configured|\bis not set\b|no kubeconfig|(^|: )setting [A-Z][A-Z0-9_]*: `)
	reHTTP    = lazyRE(`(?i)(?:answered|status|code|HTTP/\d(?:\.\d)?|HTTP)[ :=]*([1-5]\d\d)\b|\b([45]\d\d) (?:Bad Gateway|Service Unavailable|Gateway Timeout|Not Found|Forbidden|Unauthorized|Internal Server Error)`)
	reLog502  = lazyRE(`(?i)\bbad gateway\b`)
)

// Classes returns the evidence classes of a check result (its status and
// message) or, with status "", of a log line. Each class appears once; a
// message that shows no error class is "state".
func Classes(status, msg string) []string {
	var out []string
	add := func(c string) {
		if !slices.Contains(out, c) {
			out = append(out, c)
		}
	}
	switch status {
	case messages.CheckNotConfigured:
		add(ClassConfig)
	case messages.CheckSkipped:
		add(ClassBlocked)
	}
	if reConfig().MatchString(msg) {
		add(ClassConfig)
	}
	for _, x := range []struct {
		re    func() *regexp.Regexp
		class string
	}{{reRefused, ClassRefused}, {reTimeout, ClassTimeout}, {reNoRoute, ClassNoRoute}, {reReset, ClassReset}, {reDNS, ClassDNS}, {reTLS, ClassTLS}} {
		if x.re().MatchString(msg) {
			add(x.class)
		}
	}
	for _, m := range reHTTP().FindAllStringSubmatch(msg, 4) {
		code := m[1] + m[2]
		if n, err := strconv.Atoi(code); err == nil && n >= 400 {
			add(classHTTPPref + code)
		}
	}
	if status == "" && reLog502().MatchString(msg) {
		add(classHTTPPref + "502")
	}
	if len(out) == 0 {
		add(ClassState)
	}
	return out
}

// ClassesFit reports whether the observed classes include one that want
// names (a group name covers its members).
func ClassesFit(want, observed []string) bool {
	for _, w := range want {
		for _, o := range observed {
			if classIn(o, w) {
				return true
			}
		}
	}
	return false
}

// classIn reports whether observed class o is (in) wanted class w.
func classIn(o, w string) bool {
	switch {
	case o == w:
		return true
	case w == ClassNetwork:
		return slices.Contains(networkClasses, o)
	case w == ClassHTTP4xx:
		return strings.HasPrefix(o, classHTTPPref+"4")
	case w == ClassHTTP5xx:
		return strings.HasPrefix(o, classHTTPPref+"5")
	}
	return false
}

// validClass reports whether s is a class a rule may name.
func validClass(s string) bool {
	switch s {
	case ClassRefused, ClassTimeout, ClassNoRoute, ClassReset, ClassDNS, ClassTLS, ClassConfig, ClassOffline,
		ClassBlocked, ClassState, ClassNetwork, ClassHTTP4xx, ClassHTTP5xx:
		return true
	}
	if code, ok := strings.CutPrefix(s, classHTTPPref); ok {
		n, err := strconv.Atoi(code)
		return err == nil && n >= 100 && n <= 599 && len(code) == 3
	}
	return false
}

// ClassNames lists the classes a rule may name, for errors and the docs.
const ClassNames = "refused, timeout, no_route, reset, network (the four), dns, tls, http_NNN, http_4xx, http_5xx, config, offline, blocked, state"

// ClassLabel says a class in a title.
func ClassLabel(c string) string {
	if l, ok := classLabels[c]; ok {
		return l
	}
	if code, ok := strings.CutPrefix(c, classHTTPPref); ok {
		return "HTTP " + code
	}
	return c
}

// Address scopes an explains entry's `to:` may name besides CIDRs:
// "tailnet" is Tailscale's address space, "routes" GuildNet's default
// advertised routes (TS_ROUTES): what a tailnet or router fault makes
// unreachable.
var addrScopes = map[string][]netip.Prefix{
	"tailnet": {netip.MustParsePrefix("100.64.0.0/10"), netip.MustParsePrefix("fd7a:115c:a1e0::/48")},
	"routes":  {netip.MustParsePrefix("10.0.0.0/24"), netip.MustParsePrefix("10.96.0.0/12"), netip.MustParsePrefix("10.244.0.0/16")},
}

// Explain is one finding a rule explains, with the evidence the symptom
// must show of its own to be folded under the cause.
type Explain struct {
	Rule string
	// Classes: the symptom's evidence must show one of these classes.
	Classes []string
	// To: when set, the symptom's evidence must name an address (or
	// prefix) inside one of these: the addresses the cause makes
	// unreachable.
	To     []netip.Prefix
	ToText []string
	// Message: when set, the symptom's evidence must match it.
	Message *regexp.Regexp
	// CauseMessage: when set, the cause's evidence must match it.
	CauseMessage *regexp.Regexp
}

// String says the evidence required, as the docs show it.
func (e Explain) String() string {
	s := "evidence " + strings.Join(e.Classes, "/")
	if len(e.ToText) > 0 {
		s += " to " + strings.Join(e.ToText, ", ")
	}
	if e.Message != nil {
		s += fmt.Sprintf(" matching `%s`", e.Message)
	}
	if e.CauseMessage != nil {
		s += fmt.Sprintf(" (cause matching `%s`)", e.CauseMessage)
	}
	return s
}

// Fits reports whether a symptom's match may be folded under a cause's
// match by this entry. A configuration error is never folded: it is its
// own finding. causeChecks are the checks the cause fired on, for
// "blocked" evidence.
func (e Explain) Fits(cause, symptom Match) bool {
	if slices.Contains(symptom.Classes, ClassConfig) {
		return false
	}
	if e.CauseMessage != nil && !anyMatch(e.CauseMessage, cause.Evidence) {
		return false
	}
	if e.Message != nil && !anyMatch(e.Message, symptom.Evidence) {
		return false
	}
	ok := false
	for _, w := range e.Classes {
		if w == ClassBlocked {
			if slices.ContainsFunc(symptom.BlockedBy, func(b string) bool { return slices.Contains(cause.Checks, b) }) {
				ok = true
			}
			continue
		}
		if ClassesFit([]string{w}, symptom.Classes) {
			ok = true
		}
	}
	if !ok {
		return false
	}
	if len(e.To) == 0 {
		return true
	}
	for _, p := range symptom.Prefixes {
		for _, to := range e.To {
			if to.Overlaps(p) {
				return true
			}
		}
	}
	return false
}

func anyMatch(re *regexp.Regexp, ss []string) bool {
	return slices.ContainsFunc(ss, re.MatchString)
}

var reAddr = lazyRE(`\[[0-9a-fA-F:.]+\]|\b\d{1,3}(?:\.\d{1,3}){3}(?:/\d{1,2})?\b|\b[0-9a-fA-F]{1,4}(?::[0-9a-fA-F]{0,4}){2,7}(?:/\d{1,3})?`)

// Prefixes returns the IP addresses (as single-address prefixes) and
// prefixes a text names: "dial tcp 10.96.0.1:443", "[fd7a::1]:80",
// "10.96.0.0/12".
func Prefixes(text string) []netip.Prefix {
	var out []netip.Prefix
	for _, tok := range reAddr().FindAllString(text, 16) {
		tok = strings.Trim(tok, "[]")
		if p, err := netip.ParsePrefix(tok); err == nil {
			out = append(out, p.Masked())
			continue
		}
		if a, err := netip.ParseAddr(tok); err == nil {
			out = append(out, netip.PrefixFrom(a, a.BitLen()))
		}
	}
	return out
}

// parseTo reads an explains entry's `to:` item: a scope name or a CIDR.
func parseTo(s string) ([]netip.Prefix, error) {
	if ps, ok := addrScopes[s]; ok {
		return ps, nil
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return nil, fmt.Errorf("%q is neither tailnet, routes nor a CIDR", s)
	}
	return []netip.Prefix{p.Masked()}, nil
}
