package tasks

import (
	"encoding/json"
	"errors"
	"strings"
	"testing"

	"github.com/guildnet/metaguildnet/messages"
)

// Task arguments are decoded strictly: a misspelt argument is refused as
// bad arguments rather than silently left at its default.
func TestDecodeTaskArgsIsStrict(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want string // "" = accepted
	}{
		{``, "duration"}, // no arguments: sleep needs a duration
		{`null`, "duration"},
		{`{"duration":"1s"}`, ""},
		{`{"durtion":"1s"}`, `durtion`},
		{`{"duration":"1s"} {}`, "trailing"},
		{`{"duration":1}`, "cannot unmarshal"},
	} {
		_, err := decodeTaskArgs[messages.SleepArgs](json.RawMessage(tc.in))
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("%s: %v", tc.in, err)
		case tc.want != "" && (!errors.Is(err, ErrBadArgs) || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("%s: err %v, want a bad-args error containing %q", tc.in, err, tc.want)
		}
	}
}
