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

func (Ping) Run(ctx context.Context, env *Env, _ json.RawMessage) (Output, error) {
	return Output{Outcome: messages.OutcomeOK, Data: &messages.PingOutput{V: messages.Version, Pong: env.Node, Time: time.Now().UTC().Format(time.RFC3339Nano)}}, nil
}
