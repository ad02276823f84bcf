package tasks

import (
	"context"
	"encoding/json"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// Ping answers at once: it proves the node receives tasks and can report.
type Ping struct{}

func (Ping) Kind() string  { return "ping" }
func (Ping) Instant() bool { return true }

// pong is Ping's output. Time is pre-formatted: ping is the task fan-outs
// are measured with, and a string encodes several times faster than a
// time.Time (same JSON).
type pong struct {
	Pong string `json:"pong"`
	Time string `json:"time"`
}

func (Ping) Run(ctx context.Context, env *Env, _ json.RawMessage) (Output, error) {
	return Output{Outcome: messages.OutcomeOK, Data: pong{Pong: env.Node, Time: time.Now().UTC().Format(time.RFC3339Nano)}}, nil
}

// Sleep waits for a given duration (at most 10 minutes) or until the task's
// deadline. It exists to exercise deadlines, timeouts and rollouts.
type Sleep struct{}

func (Sleep) Kind() string { return "sleep" }

func (Sleep) Run(ctx context.Context, env *Env, args json.RawMessage) (Output, error) {
	var a struct {
		Duration string `json:"duration"`
	}
	if err := DecodeArgs(args, &a); err != nil {
		return Output{}, err
	}
	d, err := time.ParseDuration(a.Duration)
	if err != nil || d < 0 || d > 10*time.Minute {
		return Output{}, BadArgs("duration: %q is not a duration between 0 and 10m", a.Duration)
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return Output{Outcome: messages.OutcomeOK, Data: map[string]string{"slept": d.String()}}, nil
	case <-ctx.Done():
		return Output{}, ctx.Err()
	}
}
