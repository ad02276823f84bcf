package tasks

import (
	"context"
	"encoding/json"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// Sleep waits for a given duration (at most messages.MaxSleep) or until the
// task's deadline. It exists to exercise deadlines, timeouts and rollouts.
type Sleep struct{}

func (Sleep) Kind() string { return "sleep" }

func (Sleep) Run(ctx context.Context, env *Env, args json.RawMessage) (Output, error) {
	a, err := decodeTaskArgs[messages.SleepArgs](args)
	if err != nil {
		return Output{}, err
	}
	d, _ := a.Parse() // validated
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return Output{Outcome: messages.OutcomeOK, Data: &messages.SleepOutput{V: messages.Version, Slept: d.String()}}, nil
	case <-ctx.Done():
		return Output{}, ctx.Err()
	}
}
