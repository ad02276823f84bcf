// Package tasks is the registry of what an agent executes for the
// controller: one file per task kind (ping, sleep, facts, verify,
// diagnose), each behind the small [Task] interface, all registered in
// [Builtin] so the list of what a node will do is in one place. The
// verification checks the verify task runs are package checks. There is
// deliberately no task that runs an arbitrary command.
package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/internal/config"
	"github.com/guildnet/metaguildnet/messages"
)

// Task is one kind of work an agent runs on request.
type Task interface {
	// Kind is the name the controller asks for (e.g. "ping").
	Kind() string
	// Run does the work. ctx carries the task's deadline. A returned error
	// becomes outcome fail with the error as reason, or outcome unknown with
	// reason rejected when it wraps ErrBadArgs.
	Run(ctx context.Context, env *Env, args json.RawMessage) (Output, error)
}

// Instant is implemented by tasks that return at once, without I/O or
// waiting (ping). The agent runs them in place: no goroutine, deadline
// timer or task slot, so a fan-out of them costs an agent little more than
// the two messages.
type Instant interface {
	Instant() bool
}

// Output is what a task reports.
type Output struct {
	Outcome messages.Outcome
	Reason  string // required when Outcome is unknown; a short explanation otherwise
	Data    any    // encoded as JSON into the result's output
	// Sealed are secret outputs (setup steps' Applied.Sealed): sent in
	// Result.Sealed, which the controller never stores.
	Sealed map[string]string
}

// ErrBadArgs marks an error in a task's arguments: the agent reports the task
// as rejected rather than failed.
var ErrBadArgs = errors.New("bad task arguments")

// BadArgs wraps a message as an ErrBadArgs error.
func BadArgs(format string, a ...any) error {
	return fmt.Errorf("%w: %s", ErrBadArgs, fmt.Sprintf(format, a...))
}

// Env is what a task may know about the node it runs on.
type Env struct {
	Node    string
	Cluster string
	Role    string
	Labels  map[string]string
	Version string // agent version
	Log     *zap.Logger
	// Settings are the agent's configuration values by their environment
	// name (KUBECONFIG, TS_ROUTES, RETHINKDB_ADDR, ...), after layering of
	// flags, environment, .env.local and .env.
	Settings config.Settings
	// StateDir is the agent's private state directory (0700).
	StateDir string
	// Sealed is the task's sealed inputs (Task.Sealed), for setup steps.
	Sealed json.RawMessage
}

// decodeTaskArgs decodes and validates a task's typed arguments (see
// messages.DecodeTaskArgs); a refusal is an ErrBadArgs error.
func decodeTaskArgs[T any, PT interface {
	*T
	messages.Message
}](raw json.RawMessage) (T, error) {
	v, err := messages.DecodeTaskArgs[T, PT](raw, 0)
	if err != nil {
		return v, BadArgs("%v", err)
	}
	return v, nil
}
