package collect

import (
	"slices"
	"strings"
	"testing"
)

func TestParseDotenv(t *testing.T) {
	text := `# comment
TS_AUTHKEY=tskey-auth-abc
export TS_ROUTES="10.0.0.0/24,10.96.0.0/12"
RETHINKDB_PASS='pa ss#word'
HOSTNAME=router-1 # trailing comment
EMPTY=
ESC="a\"b\nc"
bad line here
1BAD=x
UNTERMINATED="oops
  SPACED = value  
`
	entries, problems := ParseDotenv(text)
	want := []EnvEntry{
		{"TS_AUTHKEY", "tskey-auth-abc", 2},
		{"TS_ROUTES", "10.0.0.0/24,10.96.0.0/12", 3},
		{"RETHINKDB_PASS", "pa ss#word", 4},
		{"HOSTNAME", "router-1", 5},
		{"EMPTY", "", 6},
		{"ESC", "a\"b\nc", 7},
		{"SPACED", "value", 11},
	}
	if !slices.Equal(entries, want) {
		t.Errorf("entries:\n%+v\nwant:\n%+v", entries, want)
	}
	bad := "not a KEY=VALUE assignment (KEY of letters, digits and '_')"
	wantProblems := []string{"line 8: " + bad, "line 9: " + bad, "line 10: UNTERMINATED: unterminated \" quote"}
	if !slices.Equal(problems, wantProblems) {
		t.Errorf("problems = %q", problems)
	}
}

// FuzzParseDotenv: no input panics; every entry has a valid key and a line
// within the input; problems name their line.
func FuzzParseDotenv(f *testing.F) {
	f.Add("A=1\nexport B='x'\n# c\n")
	f.Add("X=\"unterminated\nY=\\\"\n")
	f.Add("=\n==\n\"=\"\n")
	f.Fuzz(func(t *testing.T, text string) {
		entries, problems := ParseDotenv(text)
		lines := strings.Count(text, "\n") + 1
		for _, e := range entries {
			if e.Key == "" || e.Line < 1 || e.Line > lines {
				t.Fatalf("bad entry %+v", e)
			}
		}
		for _, p := range problems {
			if !strings.HasPrefix(p, "line ") {
				t.Fatalf("problem without a line: %q", p)
			}
		}
	})
}
