package checks

import (
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

func writeFile(t *testing.T, dir, name, content string) string {
	t.Helper()
	p := filepath.Join(dir, name)
	if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
	return p
}

func TestCustomChecksEveryType(t *testing.T) {
	dir := t.TempDir()
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/ok":
			fmt.Fprint(w, `{"status":"ready"}`)
		case "/auth":
			http.Error(w, "login", http.StatusUnauthorized)
		default:
			http.Error(w, "boom", http.StatusInternalServerError)
		}
	}))
	defer srv.Close()
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			c.Close()
		}
	}()
	closed := closedAddr(t)
	marker := writeFile(t, dir, "marker", "mode=ready\n")
	old := writeFile(t, dir, "old", "x")
	past := time.Now().Add(-2 * time.Hour)
	if err := os.Chtimes(old, past, past); err != nil {
		t.Fatal(err)
	}
	echo, sleep, sh := lookPath(t, "echo"), lookPath(t, "sleep"), lookPath(t, "sh")
	yaml := fmt.Sprintf(`
checks:
  - {name: http_ok, layer: registry, type: http, url: "%[1]s/ok", expect_body: ready}
  - {name: http_401_expected, layer: registry, type: http, url: "%[1]s/auth", expect_status: [200, 401]}
  - {name: http_500, layer: registry, type: http, url: "%[1]s/x"}
  - {name: http_body_missing, layer: registry, type: http, url: "%[1]s/ok", expect_body: "healthy"}
  - name: tcp_open
    layer: storage
    type: tcp
    address: "%[2]s"
  - {name: tcp_closed, layer: storage, type: tcp, address: "%[3]s"}
  - {name: dns_localhost, layer: storage, type: dns, host: localhost, expect: [127.0.0.1]}
  - {name: dns_wrong, layer: storage, type: dns, host: localhost, expect: [127.0.0.2]}
  - {name: file_ok, layer: files, type: file, path: "%[4]s", contains: "mode=ready", max_age: 1h}
  - {name: file_stale, layer: files, type: file, path: "%[5]s", max_age: 1h}
  - {name: file_absent_ok, layer: files, type: file, path: "%[6]s/nothing", exists: false}
  - {name: file_missing, layer: files, type: file, path: "%[6]s/nothing"}
  - {name: file_lacks, layer: files, type: file, path: "%[4]s", contains: "mode=broken"}
  - {name: cmd_ok, layer: cmds, type: command, command: "%[7]s", args: [hello, world], expect_output: "hello world"}
  - {name: cmd_exit, layer: cmds, type: command, command: "%[9]s", args: ["-c", "echo nope; exit 3"]}
  - {name: cmd_refused, layer: cmds, type: command, command: /usr/bin/id}
  - {name: cmd_slow, layer: cmds, type: command, command: "%[8]s", args: ["30"], timeout: 300ms}
  - {name: cmd_env, layer: cmds, type: command, command: "%[9]s", args: ["-c", "echo key=$TS_AUTHKEY"], expect_output: "key=\n"}
  - {name: after_closed, layer: storage, type: tcp, address: "%[2]s", depends_on: tcp_closed}
`, srv.URL, ln.Addr(), closed, marker, old, dir, echo, sleep, sh)
	path := writeFile(t, dir, "checks.yaml", yaml)
	t.Setenv("TS_AUTHKEY", "secret-the-command-must-not-see")
	settings := config.Settings{
		"METAGN_CUSTOM_CHECKS":    path,
		"METAGN_ALLOWED_COMMANDS": strings.Join([]string{echo, sleep, sh}, ", "),
	}
	results := runArgs(t.Context(), t, testEnv(settings), `{"layers":["registry","storage","files","cmds"]}`, RunOptions{})
	res := byName(results)
	if len(results) != 19 {
		t.Errorf("%d results, want 19", len(results))
	}
	for _, tc := range []struct{ name, status, msg string }{
		{"http_ok", messages.CheckPass, "answered 200"},
		{"http_401_expected", messages.CheckPass, "answered 401"},
		{"http_500", messages.CheckFail, "/x answered 500 Internal Server Error"},
		{"http_body_missing", messages.CheckFail, `without "healthy" in its body`},
		{"tcp_open", messages.CheckPass, "accepts TCP connections"},
		{"tcp_closed", messages.CheckFail, "TCP connect to " + closed + ": connection refused"},
		{"dns_localhost", messages.CheckPass, "localhost resolves to"},
		{"dns_wrong", messages.CheckFail, "missing 127.0.0.2"},
		{"file_ok", messages.CheckPass, marker + " present"},
		{"file_stale", messages.CheckFail, "more than 1h0m0s"},
		{"file_absent_ok", messages.CheckPass, "does not exist, as expected"},
		{"file_missing", messages.CheckFail, "no such file"},
		{"file_lacks", messages.CheckFail, `does not contain "mode=broken"`},
		{"cmd_ok", messages.CheckPass, "exited 0"},
		{"cmd_exit", messages.CheckFail, "exited 3, want 0: nope"},
		{"cmd_refused", messages.CheckFail, "refused: /usr/bin/id is not in the agent's allow-list (METAGN_ALLOWED_COMMANDS)"},
		{"cmd_slow", messages.CheckFail, "timed out after 300ms"},
		{"cmd_env", messages.CheckPass, "exited 0"},
		{"after_closed", messages.CheckSkipped, "blocked: tcp_closed fail"},
	} {
		r := res[tc.name]
		if r.Status != tc.status || !strings.Contains(r.Message, tc.msg) {
			t.Errorf("%s: %s %q, want %s containing %q", tc.name, r.Status, r.Message, tc.status, tc.msg)
		}
	}
	if d := res["cmd_slow"].DurationMS; d > 2000 {
		t.Errorf("cmd_slow took %d ms: the timeout did not kill it", d)
	}
	if o := Worst(results); o != messages.OutcomeFail {
		t.Errorf("outcome %s", o)
	}
}

func lookPath(t *testing.T, name string) string {
	t.Helper()
	for _, dir := range []string{"/usr/bin", "/bin"} {
		p := filepath.Join(dir, name)
		if _, err := os.Stat(p); err == nil {
			return p
		}
	}
	testenv.Skip(t, "%s not found in /usr/bin or /bin: the custom command checks need it", name)
	return ""
}

func TestParseCustomChecksRefusesBadEntries(t *testing.T) {
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"missing layer", "checks:\n  - name: a\n    type: tcp\n    address: x:1\n", `f.yaml:2: check "a": layer: missing`},
		{"bad type", "checks:\n  - name: a\n    layer: l\n    type: ftp\n", `f.yaml:4: check "a": type: "ftp" is not one of http, tcp, dns, file, command`},
		{"unknown field", "checks:\n  - name: a\n    layer: l\n    type: tcp\n    address: x:1\n    url: http://x\n", `f.yaml:6: check "a": url: not a field of a tcp check`},
		{"bad timeout", "checks:\n- {name: a, layer: l, type: tcp, address: 'x:1', timeout: forever}\n", `f.yaml:2: check "a": timeout: "forever" is not a duration`},
		{"bad address", "checks:\n- name: a\n  layer: l\n  type: tcp\n  address: nowhere\n", `f.yaml:5: check "a": address: "nowhere" is not host:port`},
		{"relative command", "checks:\n- name: a\n  layer: l\n  type: command\n  command: bin/true\n", `f.yaml:5: check "a": command: want a clean absolute path`},
		{"bad name", "checks:\n- name: Bad-Name\n  layer: l\n  type: tcp\n  address: x:1\n", `f.yaml:2: check "Bad-Name": name: want lower_snake_case`},
		{"bad layer", "checks:\n- name: a\n  layer: L 5\n  type: tcp\n  address: x:1\n", `f.yaml:3: check "a": layer: "L 5" is not lower_snake_case`},
		{"duplicate", "checks:\n- {name: a, layer: l, type: tcp, address: 'x:1'}\n- {name: a, layer: l, type: tcp, address: 'x:2'}\n", `f.yaml:3: check "a": name: defined twice (also line 2)`},
		{"duplicate field", "checks:\n- name: a\n  layer: l\n  layer: m\n", `f.yaml:4: check "a": layer: given twice`},
		{"bad status", "checks:\n- {name: a, layer: l, type: http, url: 'http://x', expect_status: [200, 999]}\n", `check "a": expect_status: want HTTP status codes`},
		{"bad url", "checks:\n- {name: a, layer: l, type: http, url: 'file:///etc/passwd'}\n", `check "a": url: "file:///etc/passwd" is not an http or https URL`},
		{"not a list", "checks: 3\n", "f.yaml:1: checks: want a list"},
		{"entry not a map", "checks:\n  - just a string\n", "f.yaml:2: check entry: want a mapping"},
		{"top level", "check:\n  - name: a\n", `f.yaml:1: unknown top-level field "check"`},
		{"yaml syntax", "checks:\n  - name: [a\n", "f.yaml: yaml:"},
		{"bad scope", "checks:\n- {name: a, layer: l, scope: everywhere, type: tcp, address: 'x:1'}\n", `check "a": scope: "everywhere" is neither node nor cluster`},
		{"exists false with contains", "checks:\n- {name: a, layer: l, type: file, path: /x, exists: false, contains: y}\n", `check "a": exists: false cannot go with contains`},
		{"bad expect_exit", "checks:\n- {name: a, layer: l, type: command, command: /bin/true, expect_exit: 300}\n", `check "a": expect_exit: want an integer between 0 and 255`},
		{"bad depends_on", "checks:\n- {name: a, layer: l, type: tcp, address: 'x:1', depends_on: [{x: 1}]}\n", `check "a": depends_on: want a string or a list of strings`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := ParseCustomChecks("f.yaml", []byte(tc.yaml))
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %v\nwant one containing %q", err, tc.want)
			}
		})
	}
}

func TestCustomChecksInCatalog(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name, yaml, want string
	}{
		{"accepted", "- {name: mine, layer: l5, type: tcp, address: 'x:1', depends_on: tailnet_connected}\n", ""},
		{"empty file", "", ""},
		{"clash with built-in", "checks:\n- {name: host_cpu, layer: host, type: tcp, address: 'x:1'}\n", `:2: check "host_cpu": defined twice (also built in)`},
		{"unknown dependency", "checks:\n- {name: mine, layer: l, type: tcp, address: 'x:1', depends_on: nothing_like_it}\n", `:2: check "mine": depends_on: unknown check "nothing_like_it"`},
		{"node on cluster", "checks:\n- {name: mine, layer: l, type: tcp, address: 'x:1', depends_on: kube_api_ready}\n", `"kube_api_ready" is cluster-scoped and this check is node-scoped`},
		{"cycle", "checks:\n- {name: a, layer: l, type: tcp, address: 'x:1', depends_on: b}\n- {name: b, layer: l, type: tcp, address: 'x:1', depends_on: a}\n", "cycle"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			p := writeFile(t, dir, strings.ReplaceAll(tc.name, " ", "_")+".yaml", tc.yaml)
			cat, err := Catalog(config.Settings{"METAGN_CUSTOM_CHECKS": p})
			if tc.want == "" {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if err == nil || !strings.Contains(err.Error(), tc.want) || !strings.HasPrefix(err.Error(), p) {
				t.Fatalf("error %v, want %s...%q", err, p, tc.want)
			}
			if len(cat) != len(BuiltinChecks()) {
				t.Errorf("catalog on error has %d checks, want the %d built-in", len(cat), len(BuiltinChecks()))
			}
		})
	}
	if _, err := LoadCustomChecks(filepath.Join(dir, "absent.yaml")); err == nil || !strings.Contains(err.Error(), "absent.yaml") {
		t.Errorf("missing file: %v", err)
	}
}

func FuzzParseCustomChecks(f *testing.F) {
	for _, seed := range []string{
		"",
		"checks: []\n",
		"checks:\n- {name: a, layer: l, type: tcp, address: '127.0.0.1:1'}\n",
		"- {name: a, layer: l, type: http, url: 'https://127.0.0.1:1/x', expect_status: [200, 401], insecure: true}\n",
		"checks:\n- {name: a, layer: l, type: dns, host: localhost, expect: [127.0.0.1]}\n",
		"checks:\n- {name: a, layer: l, type: file, path: /etc/hostname, contains: x, max_age: 1h}\n",
		"checks:\n- {name: a, layer: l, type: command, command: /bin/true, args: [x], expect_exit: 1, timeout: 1s, depends_on: [b]}\n",
		"checks: &a [*a]\n",
		"a: &a [*a, *a, *a]\nchecks: *a\n",
		"checks:\n- !!binary AAAA\n",
		"checks:\n- {? [a]: b}\n",
		"%YAML 1.2\n---\nchecks: ~\n",
		"checks:\n- name: a\n  layer: l\n  type: tcp\n  address: x:1\n  timeout: -1s\n",
	} {
		f.Add([]byte(seed))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		checks, err := ParseCustomChecks("fuzz.yaml", data)
		if err != nil {
			if !strings.HasPrefix(err.Error(), "fuzz.yaml") {
				t.Fatalf("error does not name the file: %v", err)
			}
			return
		}
		for _, c := range checks {
			if c.Run == nil || !ValidName(c.Name) || !ValidName(c.Layer) || c.Timeout <= 0 || c.Timeout > MaxCheckTimeout {
				t.Fatalf("accepted an invalid check: %+v", c)
			}
			if !strings.HasPrefix(c.Source, "fuzz.yaml:") {
				t.Fatalf("source %q", c.Source)
			}
		}
		_ = ValidateChecks(append(BuiltinChecks(), checks...))
	})
}
