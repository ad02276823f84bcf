package poll

import (
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"
)

func TestUntil(t *testing.T) {
	n := 0
	Until(t, time.Second, "three looks", func() bool { n++; return n == 3 })
	if n != 3 {
		t.Fatalf("looked %d times", n)
	}
}

// fakeT records a failure instead of stopping the test.
type fakeT struct {
	testing.TB
	failed bool
}

func (f *fakeT) Helper()               {}
func (f *fakeT) Fatalf(string, ...any) { f.failed = true }

func TestUntilFailsAtTheDeadline(t *testing.T) {
	f := &fakeT{TB: t}
	Until(f, 50*time.Millisecond, "never", func() bool { return f.failed })
	if !f.failed {
		t.Fatal("no failure at the deadline")
	}
}

func TestUntilOK(t *testing.T) {
	answers := []error{errors.New("not yet"), errors.New("not yet"), nil}
	calls := 0
	UntilOK(t, time.Second, "the third answer", func() error { calls++; return answers[calls-1] })
	if calls != len(answers) {
		t.Fatalf("called %d times, want %d", calls, len(answers))
	}
}

// msgT records the failure message instead of stopping the test.
type msgT struct {
	testing.TB
	msg string
}

func (m *msgT) Helper()                           {}
func (m *msgT) Fatalf(format string, args ...any) { m.msg = fmt.Sprintf(format, args...) }

func TestUntilOKFailsWithTheLastError(t *testing.T) {
	m := &msgT{TB: t}
	UntilOK(m, 50*time.Millisecond, "never", func() error {
		if m.msg != "" {
			return nil
		}
		return errors.New("still refused")
	})
	if !strings.Contains(m.msg, "waiting for never: still refused") {
		t.Fatalf("failure %q does not name the last error", m.msg)
	}
}
