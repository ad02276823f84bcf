// Package ctlclient is the operator side of the API on mgn.api.*: the CLI
// commands use it to talk to the controller running with the same data dir.
package ctlclient

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/nats-io/nats.go"
	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/internal/runinfo"
	"github.com/guildnet/metaguildnet/messages"
)

// Client is a connection to a controller as its operator.
type Client struct {
	nc *nats.Conn
}

// ErrUnreachable wraps every failure to reach the controller, so the CLI can
// exit with the "connection error" code.
var ErrUnreachable = errors.New("controller unreachable")

// Dial connects to the controller that runs with dataDir.
func Dial(dataDir string) (*Client, error) {
	info, err := runinfo.Read(dataDir)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	kp, err := runinfo.AdminKey(dataDir, false)
	if err != nil {
		return nil, fmt.Errorf("%w: %v", ErrUnreachable, err)
	}
	pub, _ := kp.PublicKey()
	url, local := info.NATSURL, localOptions(info)
	if len(local) > 0 {
		url = "nats://local"
	}
	nc, err := nats.Connect(url, append([]nats.Option{nats.Nkey(pub, kp.Sign), nats.Name("cli"),
		nats.Timeout(5 * time.Second), nats.MaxReconnects(-1), nats.ReconnectWait(250 * time.Millisecond)}, local...)...)
	if err != nil {
		return nil, fmt.Errorf("%w: controller %s (pid %d, data dir %s) is not answering: %v; is `controller serve --data-dir %s` running?",
			ErrUnreachable, info.NATSURL, info.PID, dataDir, err, dataDir)
	}
	return &Client{nc: nc}, nil
}

// Close closes the connection.
func (c *Client) Close() { c.nc.Close() }

// APIError is a refusal from the controller.
type APIError struct{ messages.ErrorReply }

func (e *APIError) Error() string { return e.ErrorReply.Error }

// call sends req to mgn.api.VERB and decodes the reply into out.
func call[T any, PT interface {
	*T
	messages.Message
}](ctx context.Context, c *Client, verb string, req messages.Message) (T, error) {
	var zero T
	b, err := messages.Encode(req)
	if err != nil {
		return zero, err
	}
	// A request can be lost (sent to a controller just killed, say): one
	// without a deadline of the caller's would wait forever, so it gets
	// the verb's own (messages.APITimeout) and the caller can ask again.
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, messages.APITimeout(verb))
		defer cancel()
	}
	m, err := c.nc.RequestWithContext(ctx, messages.APISubject(verb), b)
	if err != nil {
		return zero, fmt.Errorf("%w: %s: %v", ErrUnreachable, verb, err)
	}
	// Every reply could be an ErrorReply; only one that has a "code" key
	// is worth decoding as one (a large report is not read twice).
	if bytes.Contains(m.Data, []byte(`"code"`)) {
		if e, err := messages.Decode[messages.ErrorReply](m.Data, 0); err == nil && e.Code != "" {
			return zero, &APIError{e}
		}
	}
	return messages.Decode[T, PT](m.Data, 64<<20)
}

// Status returns the whole fleet view, reading it page by page.
func (c *Client) Status(ctx context.Context) (messages.StatusReply, error) {
	var all messages.StatusReply
	for off := 0; ; {
		page, err := call[messages.StatusReply](ctx, c, messages.APIStatus, &messages.StatusRequest{V: messages.Version, Offset: off})
		if err != nil {
			return all, err
		}
		nodes := append(all.Nodes, page.Nodes...)
		clusters := all.Clusters
		for _, cs := range page.Clusters {
			// Nodes come sorted by cluster: a cluster whose nodes span
			// pages ends one page and starts the next.
			if n := len(clusters); n == 0 || clusters[n-1].Name != cs.Name {
				clusters = append(clusters, cs)
			}
		}
		all = page
		all.Nodes, all.Clusters = nodes, clusters
		if page.NextOffset == 0 || page.NextOffset <= off {
			return all, nil
		}
		off = page.NextOffset
	}
}

func (c *Client) Run(ctx context.Context, req messages.RunRequest) (messages.RunReply, error) {
	req.V = messages.Version
	return call[messages.RunReply](ctx, c, messages.APIRun, &req)
}

// Report returns a task's report, waiting up to wait for it to finish; the
// rows are read page by page.
func (c *Client) Report(ctx context.Context, id string, wait time.Duration) (messages.TaskReport, error) {
	rep, err := call[messages.TaskReport](ctx, c, messages.APITaskWait, &messages.TaskWaitRequest{V: messages.Version, TaskID: id, Wait: wait.String()})
	for off := rep.NextOffset; err == nil && off > 0; off = rep.NextOffset {
		var page messages.TaskReport
		page, err = call[messages.TaskReport](ctx, c, messages.APITaskWait, &messages.TaskWaitRequest{V: messages.Version, TaskID: id, Offset: off})
		if err == nil {
			if page.NextOffset != 0 && page.NextOffset <= off {
				page.NextOffset = 0
			}
			page.Results = append(rep.Results, page.Results...)
			rep = page
		}
	}
	return rep, err
}

// Wait polls the task until it is done or ctx ends. It survives a controller
// restart: the connection reconnects and the task is rebuilt on the other side.
func (c *Client) Wait(ctx context.Context, id string) (messages.TaskReport, error) {
	var last messages.TaskReport
	for {
		rctx, cancel := context.WithTimeout(ctx, 12*time.Second)
		rep, err := c.Report(rctx, id, 10*time.Second)
		cancel()
		if err == nil {
			last = rep
			if rep.Done {
				return rep, nil
			}
		} else if ae := (*APIError)(nil); errors.As(err, &ae) {
			return last, err
		}
		select {
		case <-ctx.Done():
			if last.TaskID != "" {
				return last, fmt.Errorf("task %s not finished: %w", id, ctx.Err())
			}
			return last, fmt.Errorf("%w: task %s: %v", ErrUnreachable, id, ctx.Err())
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (c *Client) TokenCreate(ctx context.Context, ttl string, reusable bool, scope messages.TokenScope) (messages.TokenCreateReply, error) {
	return c.TokenCreateWith(ctx, messages.TokenCreateRequest{V: messages.Version, TTL: ttl, Reusable: reusable, Scope: scope})
}

// TokenCreateWith creates a join token as req says (its URLs, for one).
func (c *Client) TokenCreateWith(ctx context.Context, req messages.TokenCreateRequest) (messages.TokenCreateReply, error) {
	req.V = messages.Version
	return call[messages.TokenCreateReply](ctx, c, messages.APITokenCreate, &req)
}

// DashboardLogin asks for a one-time sign-in link to the web dashboard
// (ttl "" for the default).
func (c *Client) DashboardLogin(ctx context.Context, ttl string) (messages.DashboardLoginReply, error) {
	return call[messages.DashboardLoginReply](ctx, c, messages.APIDashboardLogin, &messages.DashboardLoginRequest{V: messages.Version, TTL: ttl})
}

// NodesSet changes a node's cluster, role or labels.
func (c *Client) NodesSet(ctx context.Context, req messages.NodesSetRequest) (messages.NodesSetReply, error) {
	req.V = messages.Version
	return call[messages.NodesSetReply](ctx, c, messages.APINodesSet, &req)
}

func (c *Client) NodesRemove(ctx context.Context, name string) (messages.NodesRemoveReply, error) {
	return call[messages.NodesRemoveReply](ctx, c, messages.APINodesRemove, &messages.NodesRemoveRequest{V: messages.Version, Name: name})
}

// Verify runs a verification sweep and returns its report.
func (c *Client) Verify(ctx context.Context, req messages.VerifyRequest) (messages.Report, error) {
	req.V = messages.Version
	rep, err := call[messages.VerifyReply](ctx, c, messages.APIVerify, &req)
	if err != nil {
		return messages.Report{}, err
	}
	return c.GetReport(ctx, rep.ReportID)
}

// LastReport returns the newest stored report.
func (c *Client) LastReport(ctx context.Context) (messages.Report, error) {
	rep, err := call[messages.VerifyReply](ctx, c, messages.APIReportLast, &messages.ReportLastRequest{V: messages.Version})
	if err != nil {
		return messages.Report{}, err
	}
	return c.GetReport(ctx, rep.ReportID)
}

// GetReport reads a stored report from the object store (reports may be
// larger than one message).
func (c *Client) GetReport(ctx context.Context, id string) (messages.Report, error) {
	var rep messages.Report
	err := c.getObject(ctx, messages.ReportsBucket, id, &rep)
	return rep, err
}

// Diagnose runs a diagnosis and returns its stored result.
func (c *Client) Diagnose(ctx context.Context, req messages.DiagnoseRequest) (messages.DiagnoseResult, error) {
	req.V = messages.Version
	rep, err := call[messages.DiagnoseReply](ctx, c, messages.APIDiagnose, &req)
	if err != nil {
		return messages.DiagnoseResult{}, err
	}
	var res messages.DiagnoseResult
	err = c.getObject(ctx, messages.DiagnosesBucket, rep.ResultID, &res)
	return res, err
}

func (c *Client) getObject(ctx context.Context, bucket, id string, v any) error {
	js, err := jetstream.New(c.nc)
	if err != nil {
		return err
	}
	os, err := js.ObjectStore(ctx, bucket)
	if err != nil {
		return fmt.Errorf("%w: object store %s: %v", ErrUnreachable, bucket, err)
	}
	b, err := os.GetBytes(ctx, id)
	if err != nil {
		return fmt.Errorf("%s/%s: %w", bucket, id, err)
	}
	if err := json.Unmarshal(b, v); err != nil {
		return fmt.Errorf("%s/%s: %w", bucket, id, err)
	}
	return nil
}

// Conn exposes the connection (tests, event streaming).
func (c *Client) Conn() *nats.Conn { return c.nc }

// SetupPlan plans a spec (or one cluster or layer of it) on the agents.
func (c *Client) SetupPlan(ctx context.Context, req messages.SetupRequest) (messages.SetupPlanReply, error) {
	req.V = messages.Version
	return call[messages.SetupPlanReply](ctx, c, messages.APISetupPlan, &req)
}

// SetupApply starts a setup run and returns its id; follow it with
// SetupStatus.
func (c *Client) SetupApply(ctx context.Context, req messages.SetupRequest) (messages.SetupApplyReply, error) {
	req.V = messages.Version
	return call[messages.SetupApplyReply](ctx, c, messages.APISetupApply, &req)
}

// SetupStatus returns a setup run (id "" is the newest) and its progress.
func (c *Client) SetupStatus(ctx context.Context, id string) (messages.SetupStatusReply, error) {
	return call[messages.SetupStatusReply](ctx, c, messages.APISetupStatus, &messages.SetupStatusRequest{V: messages.Version, RunID: id})
}

// RolloutStart starts a rollout and returns its id; follow it with
// RolloutStatus.
func (c *Client) RolloutStart(ctx context.Context, req messages.RolloutStartRequest) (messages.RolloutStartReply, error) {
	req.V = messages.Version
	return call[messages.RolloutStartReply](ctx, c, messages.APIRolloutStart, &req)
}

// RolloutStatus returns a rollout (id "" is the newest) and its progress.
func (c *Client) RolloutStatus(ctx context.Context, id string) (messages.RolloutStatusReply, error) {
	return call[messages.RolloutStatusReply](ctx, c, messages.APIRolloutStatus, &messages.RolloutRequest{V: messages.Version, ID: id})
}

// RolloutControl pauses, resumes or aborts a rollout (verb is one of
// messages.APIRolloutPause, APIRolloutResume, APIRolloutAbort).
func (c *Client) RolloutControl(ctx context.Context, verb, id string) (messages.RolloutStatusReply, error) {
	return call[messages.RolloutStatusReply](ctx, c, verb, &messages.RolloutRequest{V: messages.Version, ID: id})
}

// RolloutList lists rollouts, newest first.
func (c *Client) RolloutList(ctx context.Context) (messages.RolloutListReply, error) {
	return call[messages.RolloutListReply](ctx, c, messages.APIRolloutList, &messages.RolloutListRequest{V: messages.Version})
}

// RolloutDiff compares two spec revisions.
func (c *Client) RolloutDiff(ctx context.Context, from, to int64) (messages.RolloutDiffReply, error) {
	return call[messages.RolloutDiffReply](ctx, c, messages.APIRolloutDiff, &messages.RolloutDiffRequest{V: messages.Version, From: from, To: to})
}
