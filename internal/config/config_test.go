package config

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/spf13/pflag"
)

func TestParseDotEnv(t *testing.T) {
	tests := []struct {
		name, in string
		want     map[string]string
		wantErr  string
	}{
		{name: "plain", in: "A=1\n# c\n\nexport B = two words\n", want: map[string]string{"A": "1", "B": "two words"}},
		{name: "quotes", in: `A="x # y"` + "\nB='z'\nC=v # trailing", want: map[string]string{"A": "x # y", "B": "z", "C": "v"}},
		{name: "empty", in: "A=\n", want: map[string]string{"A": ""}},
		{name: "no equals", in: "A=1\nBROKEN\n", wantErr: "f:2:"},
		{name: "bad key", in: "1A=1\n", wantErr: "f:1:"},
		{name: "unterminated", in: "A=\"x\n", wantErr: "f:1: A: unterminated"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			got, err := ParseDotEnv(strings.NewReader(tt.in), "f")
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("err = %v, want containing %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for k, v := range tt.want {
				if got[k].Val != v {
					t.Errorf("%s = %q, want %q", k, got[k].Val, v)
				}
			}
			if len(got) != len(tt.want) {
				t.Errorf("got %d keys, want %d", len(got), len(tt.want))
			}
		})
	}
}

func TestLayering(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".env"), []byte("METAGN_LISTEN=env-file\nMETAGN_LOG_LEVEL=warn\nMETAGN_HTTP=from-env\n"), 0o600)
	os.WriteFile(filepath.Join(dir, ".env.local"), []byte("METAGN_LISTEN=local-file\nMETAGN_LABEL=a=1,b=2\n"), 0o600)
	t.Setenv("METAGN_LOG_LEVEL", "debug")
	v, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	listen := fs.String("listen", "default", "")
	level := fs.String("log-level", "info", "")
	http := fs.String("http", "default", "")
	other := fs.String("other", "default", "")
	labels := fs.StringSlice("label", nil, "")
	if err := fs.Parse([]string{"--http", "flag"}); err != nil {
		t.Fatal(err)
	}
	if err := Apply(fs, v); err != nil {
		t.Fatal(err)
	}
	for _, c := range []struct{ got, want string }{
		{*listen, "local-file"}, // .env.local over .env
		{*level, "debug"},       // environment over files
		{*http, "flag"},         // flags over everything
		{*other, "default"},     // defaults last
		{strings.Join(*labels, ";"), "a=1;b=2"},
	} {
		if c.got != c.want {
			t.Errorf("got %q, want %q", c.got, c.want)
		}
	}
}

func TestApplyErrorNamesSource(t *testing.T) {
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, ".env"), []byte("\nMETAGN_INTERVAL=soon\n"), 0o600)
	v, err := Load(dir)
	if err != nil {
		t.Fatal(err)
	}
	fs := pflag.NewFlagSet("x", pflag.ContinueOnError)
	fs.Duration("interval", 0, "")
	err = Apply(fs, v)
	if err == nil || !strings.Contains(err.Error(), "METAGN_INTERVAL") || !strings.Contains(err.Error(), ".env:2") {
		t.Fatalf("err = %v, want it to name METAGN_INTERVAL and .env:2", err)
	}
}

func FuzzParseDotEnv(f *testing.F) {
	f.Add("A=1\nB=\"2\"\n# x\nexport C='3'\n")
	f.Add("=\n'\"")
	f.Add("A=\"")
	f.Fuzz(func(t *testing.T, in string) {
		v, err := ParseDotEnv(strings.NewReader(in), "fuzz")
		if err == nil {
			for k := range v {
				if !validKey(k) {
					t.Fatalf("accepted invalid key %q", k)
				}
			}
		}
	})
}
