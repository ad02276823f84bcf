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
