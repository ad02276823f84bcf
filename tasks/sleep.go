package tasks

import (
	"context"
	"encoding/json"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

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
