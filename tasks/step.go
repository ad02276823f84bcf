package tasks

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/fleet"
	"github.com/guildnet/metaguildnet/messages"
	"github.com/guildnet/metaguildnet/steps"
)

// MaxSecretFileBytes bounds a secret read from file:PATH.
const MaxSecretFileBytes = 64 << 10

// StepTask runs one setup step of a fixed registry (package steps) on this
// node: op plan, apply, undo or check (prerequisites only). Plan and apply
// check prerequisites first; a missing one reports action blocked with the
// command that fixes it. Failures carry their class (steps.Classify) so
// the controller knows whether to retry.
type StepTask struct {
	// Steps is the registry the task looks steps up in; nil means
	// steps.Builtin().
	Steps *steps.Registry
}

func (StepTask) Kind() string { return "step" }

func (s StepTask) Run(ctx context.Context, env *Env, raw json.RawMessage) (Output, error) {
	args, err := decodeTaskArgs[messages.StepArgs](raw)
	if err != nil {
		return Output{}, err
	}
	if env == nil {
		env = &Env{}
	}
	if err := fleet.ValidateCluster(&args.Cluster); err != nil {
		return Output{}, BadArgs("cluster spec: %v", err)
	}
	if env.Cluster != "" && env.Cluster != args.Cluster.Name {
		return Output{}, BadArgs("step for cluster %q, but this node is in cluster %q", args.Cluster.Name, env.Cluster)
	}
	reg := s.Steps
	if reg == nil {
		reg = steps.Builtin()
	}
	st, ok := reg.Lookup(args.Step)
	if !ok {
		return Output{}, BadArgs("unknown step %q", args.Step)
	}
	sealed, err := messages.DecodeSealed(env.Sealed)
	if err != nil {
		return Output{}, BadArgs("sealed: %v", err)
	}
	log := env.Log
	if log == nil {
		log = zap.NewNop()
	}
	senv := &steps.Env{Node: env.Node, Cluster: args.Cluster.Name, Role: env.Role, Labels: env.Labels, Log: log,
		Settings: env.Settings, StateDir: env.StateDir, Spec: args.Cluster, Inputs: args.Inputs,
		Secret: secretResolver(env), Sealed: sealed}
	out := &messages.StepOutput{V: messages.Version, Step: st.Name, Op: args.Op}
	var sealedOut map[string]string
	err = func() error {
		if args.Op != messages.StepOpUndo && st.Prereqs != nil {
			if err := st.Prereqs(ctx, senv); err != nil {
				return err
			}
		}
		switch args.Op {
		case messages.StepOpPlan:
			p, err := st.Plan(ctx, senv)
			if err != nil {
				return err
			}
			out.Action, out.Diff, out.Blocked = p.Action, p.Diff, p.Blocked
		case messages.StepOpApply:
			a, err := st.Apply(ctx, senv)
			if err != nil {
				return err
			}
			out.Action, out.Diff, out.Outputs = a.Action, a.Diff, a.Outputs
			if a.Undo != nil {
				b, err := json.Marshal(a.Undo)
				if err != nil {
					return fmt.Errorf("step %s: encode undo: %w", st.Name, err)
				}
				out.Undo = b
			}
			sealedOut = a.Sealed
		case messages.StepOpUndo:
			if st.Undo != nil && len(args.Undo) > 0 {
				return st.Undo(ctx, senv, args.Undo)
			}
		}
		return nil
	}()
	if out.Action == "" && args.Op != messages.StepOpUndo && args.Op != messages.StepOpCheck && err == nil {
		out.Action = messages.ActionUnchanged
	}
	if err != nil {
		out.ErrClass = steps.Classify(err)
		out.Error = truncateText(err.Error())
		var be *steps.BlockedError
		if errors.As(err, &be) {
			out.Action, out.Blocked = messages.ActionBlocked, truncateText(be.Error())
		}
	}
	out.Diff, out.Blocked = truncateText(out.Diff), truncateText(out.Blocked)
	if verr := out.Validate(); verr != nil {
		// A step returned something the wire refuses (an output key, a
		// size): that is the step's failure, not the node's.
		return Output{Outcome: messages.OutcomeFail, Reason: "step output refused: " + verr.Error(),
			Data: &messages.StepOutput{V: messages.Version, Step: st.Name, Op: args.Op, ErrClass: messages.StepErrFailed, Error: truncateText(verr.Error())}}, nil
	}
	if _, serr := messages.EncodeSealed(sealedOut); serr != nil {
		return Output{Outcome: messages.OutcomeFail, Reason: "sealed outputs refused: " + serr.Error(),
			Data: &messages.StepOutput{V: messages.Version, Step: st.Name, Op: args.Op, ErrClass: messages.StepErrFailed, Error: truncateText("sealed outputs: " + serr.Error())}}, nil
	}
	res := Output{Outcome: messages.OutcomeOK, Data: out, Sealed: sealedOut}
	switch {
	case err != nil:
		res.Outcome, res.Reason = messages.OutcomeFail, fmt.Sprintf("%s %s: %s", st.Name, args.Op, out.ErrClass)
	case out.Action == messages.ActionBlocked:
		res.Outcome, res.Reason = messages.OutcomeWarn, st.Name+" blocked"
	default:
		res.Reason = fmt.Sprintf("%s %s: %s", st.Name, args.Op, out.Action)
	}
	return res, nil
}

func truncateText(s string) string {
	if len(s) <= messages.MaxStepText {
		return s
	}
	return s[:messages.MaxStepText-3] + "..."
}

// secretResolver resolves env:NAME from the agent's settings, then its
// environment, and file:PATH from its disk (bounded). Errors never carry
// the value.
func secretResolver(env *Env) func(ref messages.SecretRef) (string, error) {
	return func(ref messages.SecretRef) (string, error) {
		if err := fleet.ValidSecretRef(ref); err != nil {
			return "", steps.Configf("write env:NAME or file:PATH", "secret reference: %v", err)
		}
		s := string(ref)
		if name, ok := strings.CutPrefix(s, "env:"); ok {
			if v := env.Settings[name]; v != "" {
				return v, nil
			}
			if v := os.Getenv(name); v != "" {
				return v, nil
			}
			return "", steps.Configf(fmt.Sprintf("set %s in the agent's environment or env file on node %s", name, env.Node),
				"secret %s: %s is not set on this node", s, name)
		}
		path := strings.TrimPrefix(s, "file:")
		f, err := os.Open(path)
		if err != nil {
			return "", steps.Configf(fmt.Sprintf("create %s (mode 0600) on node %s", path, env.Node), "secret %s: %v", s, errors.Unwrap(err))
		}
		defer f.Close()
		b, err := io.ReadAll(io.LimitReader(f, MaxSecretFileBytes+1))
		if err != nil {
			return "", fmt.Errorf("secret %s: read: %w", s, err)
		}
		if len(b) > MaxSecretFileBytes {
			return "", steps.Configf("keep the secret file small", "secret %s: larger than %d bytes", s, MaxSecretFileBytes)
		}
		return strings.TrimRight(string(b), "\r\n"), nil
	}
}
