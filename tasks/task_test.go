package tasks

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"
)

func TestDecodeArgsIsStrict(t *testing.T) {
	type args struct {
		Duration string `json:"duration"`
	}
	for _, tc := range []struct {
		in   string
		want string // "" = accepted
	}{
		{``, ""},
		{`null`, ""},
		{`{"duration":"1s"}`, ""},
		{`{"durtion":"1s"}`, `unknown field "durtion"`},
		{`{"duration":"1s"} {}`, "data after"},
		{`{"duration":1}`, "cannot unmarshal"},
	} {
		var a args
		err := DecodeArgs(json.RawMessage(tc.in), &a)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case tc.want != "" && (!errors.Is(err, ErrBadArgs) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err %v, want a bad-args error containing %q", tc.in, err, tc.want)
		}
	}
}
