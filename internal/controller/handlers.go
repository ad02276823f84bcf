package controller

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

// reply answers a request with v, or with an ErrorReply when err is set.
func (c *Controller) reply(m *nats.Msg, kind string, v messages.Message, err error) {
	if m.Reply == "" {
		return
	}
	if err != nil {
		c.met.refused(kind, messages.CodeOf(err))
		v = &messages.ErrorReply{V: messages.Version, Error: err.Error(), Code: messages.CodeOf(err)}
	}
	b := messages.MustEncode(v)
	if len(b) > c.opts.MaxMessageBytes {
		c.met.refused(kind, messages.CodeTooLarge)
		b = messages.MustEncode(&messages.ErrorReply{V: messages.Version, Code: messages.CodeTooLarge,
			Error: fmt.Sprintf("reply of %d bytes exceeds the message limit of %d bytes", len(b), c.opts.MaxMessageBytes)})
	}
	if perr := m.Respond(b); perr != nil {
		c.log.Warn("reply", zap.String("subject", m.Subject), zap.Error(perr))
	}
}

func (c *Controller) onEnroll(m *nats.Msg) {
	pub := strings.TrimPrefix(m.Subject, messages.EnrollPrefix)
	req, err := messages.Decode[messages.EnrollRequest](m.Data, c.opts.MaxMessageBytes)
	if err != nil {
		c.reply(m, "enroll", nil, err)
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	h, ok := c.auth.takePending(pub)
	if !ok {
		c.reply(m, "enroll", nil, messages.Errorf(messages.CodeBadRequest, "no enrollment in progress for this key: reconnect with a join token"))
		return
	}
	if err := c.tokens.consume(ctx, h, req.Name); err != nil {
		c.reply(m, "enroll", nil, messages.Errorf(messages.CodeBadRequest, "%v", err))
		return
	}
	if err := c.reg.enroll(ctx, pub, req); err != nil {
		c.reply(m, "enroll", nil, err)
		return
	}
	c.auth.addNode(pub, req.Name)
	c.log.Info("node enrolled", zap.String("node", req.Name), zap.String("cluster", req.Cluster), zap.String("role", req.Role))
	c.reply(m, "enroll", &messages.EnrollReply{V: messages.Version, Name: req.Name,
		HeartbeatInterval: c.opts.HeartbeatInterval.String(), MaxMessageBytes: c.opts.MaxMessageBytes}, nil)
}

func (c *Controller) onHeartbeat(m *nats.Msg) {
	node, err := messages.NodeFromSubject(messages.HeartbeatPfx, m.Subject)
	if err != nil {
		c.met.refused("heartbeat", "bad_subject")
		return
	}
	hb, err := messages.Decode[messages.Heartbeat](m.Data, c.opts.MaxMessageBytes)
	if err != nil {
		c.met.refused("heartbeat", messages.CodeOf(err))
		c.log.Warn("refused heartbeat", zap.String("node", node), zap.Error(err))
		return
	}
	c.met.heartbeats.Inc()
	prev, ok := c.reg.heartbeat(node, hb, time.Now().UTC())
	if ok && prev != messages.StateOnline {
		c.announce(transition{node, prev, messages.StateOnline})
	}
}

func (c *Controller) onSync(m *nats.Msg) {
	node, err := messages.NodeFromSubject(messages.SyncPrefix, m.Subject)
	if err != nil {
		c.met.refused("sync", "bad_subject")
		return
	}
	if _, err := messages.Decode[messages.SyncRequest](m.Data, c.opts.MaxMessageBytes); err != nil {
		c.reply(m, "sync", nil, err)
		return
	}
	// The answer may wait for recovery and for the result store: other
	// syncs go on meanwhile. Without an answer the agent asks again.
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		select {
		case <-c.disp.recovered:
		case <-ctx.Done():
			return
		}
		tasks, err := c.disp.owedBy(ctx, node)
		if err != nil {
			return
		}
		c.reply(m, "sync", &messages.SyncReply{V: messages.Version, Tasks: tasks,
			HeartbeatInterval: c.opts.HeartbeatInterval.String()}, nil)
	}()
}

func (c *Controller) onAck(m *nats.Msg) {
	node, err := messages.NodeFromSubject(messages.AckPrefix, m.Subject)
	if err != nil {
		c.met.refused("ack", "bad_subject")
		return
	}
	a, err := messages.Decode[messages.Ack](m.Data, c.opts.MaxMessageBytes)
	if err != nil {
		c.met.refused("ack", messages.CodeOf(err))
		return
	}
	c.disp.onAck(node, a)
}

// onAPI serves the operator API. Each request runs in its own goroutine
// (bounded) because task.wait, verify and diagnose wait for tasks; each
// gets its verb's own deadline, messages.APITimeout.
func (c *Controller) onAPI(m *nats.Msg) {
	select {
	case c.apiSem <- struct{}{}:
	default:
		c.reply(m, "api", nil, messages.Errorf(messages.CodeInternal, "controller busy: too many API requests in flight, retry"))
		return
	}
	go func() {
		defer func() { <-c.apiSem }()
		verb := strings.TrimPrefix(m.Subject, messages.APIPrefix)
		ctx, cancel := context.WithTimeout(context.Background(), messages.APITimeout(verb))
		defer cancel()
		v, err := c.api(ctx, verb, m.Data)
		c.reply(m, "api", v, err)
	}()
}

func (c *Controller) api(ctx context.Context, verb string, data []byte) (messages.Message, error) {
	max := c.opts.MaxMessageBytes
	switch verb {
	case messages.APIStatus:
		req, err := messages.Decode[messages.StatusRequest](data, max)
		if err != nil {
			return nil, err
		}
		st := c.reg.status(time.Now().UTC())
		st.Total = len(st.Nodes)
		lo, hi, next := messages.Page(req.Offset, req.Limit, st.Total)
		st.Nodes, st.NextOffset = st.Nodes[lo:hi], next
		for i := range st.Nodes {
			st.Nodes[i].Layers, st.Nodes[i].LastVerified = c.ver.layersOf(st.Nodes[i].Name)
		}
		return &st, nil
	case messages.APIRun:
		req, err := messages.Decode[messages.RunRequest](data, max)
		if err != nil {
			return nil, err
		}
		rep, err := c.disp.issue(ctx, req)
		return &rep, err
	case messages.APITaskWait:
		req, err := messages.Decode[messages.TaskWaitRequest](data, max)
		if err != nil {
			return nil, err
		}
		var wait time.Duration
		if req.Wait != "" {
			wait, _ = time.ParseDuration(req.Wait)
		}
		rep, err := c.disp.report(ctx, req.TaskID, wait)
		if err != nil {
			return nil, err
		}
		rep.Total = len(rep.Results)
		lo, hi, next := messages.ReportPage(rep.Results, req.Offset, req.Limit, c.opts.MaxMessageBytes/2)
		rep.Results, rep.NextOffset = rep.Results[lo:hi], next
		return &rep, nil
	case messages.APITokenCreate:
		req, err := messages.Decode[messages.TokenCreateRequest](data, max)
		if err != nil {
			return nil, err
		}
		ttl := 24 * time.Hour
		if req.TTL != "" {
			ttl, _ = time.ParseDuration(req.TTL)
		}
		tok, rec, err := c.tokens.create(ctx, ttl, req.Reusable)
		if err != nil {
			return nil, err
		}
		c.log.Info("join token created", zap.Time("expires_at", rec.ExpiresAt), zap.Bool("reusable", rec.Reusable))
		return &messages.TokenCreateReply{V: messages.Version, Token: tok, ExpiresAt: rec.ExpiresAt, Reusable: rec.Reusable}, nil
	case messages.APIVerify:
		req, err := messages.Decode[messages.VerifyRequest](data, max)
		if err != nil {
			return nil, err
		}
		rep, id, err := c.ver.run(ctx, req)
		if err != nil {
			return nil, err
		}
		return &messages.VerifyReply{V: messages.Version, ReportID: id, OverallStatus: rep.OverallStatus}, nil
	case messages.APIReportLast:
		if _, err := messages.Decode[messages.ReportLastRequest](data, max); err != nil {
			return nil, err
		}
		id, err := c.ver.lastReportID(ctx)
		if err != nil {
			return nil, err
		}
		if id == "" {
			return nil, messages.Errorf(messages.CodeNotFound, "no verification report yet: run `controller verify`")
		}
		return &messages.VerifyReply{V: messages.Version, ReportID: id}, nil
	case messages.APIDiagnose:
		req, err := messages.Decode[messages.DiagnoseRequest](data, max)
		if err != nil {
			return nil, err
		}
		rep, err := c.diagnose(ctx, req)
		if err != nil {
			return nil, err
		}
		return &rep, nil
	case messages.APINodesRemove:
		req, err := messages.Decode[messages.NodesRemoveRequest](data, max)
		if err != nil {
			return nil, err
		}
		return c.removeNode(ctx, req.Name)
	}
	return nil, messages.Errorf(messages.CodeUnknownKind, "unknown API verb %q", verb)
}

// removeNode revokes a node at once: its key is forgotten (so reconnects
// are refused), its live connections are closed, and its open tasks settle.
func (c *Controller) removeNode(ctx context.Context, name string) (messages.Message, error) {
	pub, err := c.reg.remove(ctx, name)
	if pub == "" {
		return nil, err
	}
	n := 0
	for _, id := range c.auth.removeNode(pub, name) {
		if c.ns.DisconnectClientByID(id) == nil {
			n++
		}
	}
	c.disp.nodeRemoved(name)
	c.log.Info("node removed", zap.String("node", name), zap.Int("disconnected", n))
	c.announce(transition{name, "enrolled", "removed"})
	if err != nil {
		return nil, err
	}
	return &messages.NodesRemoveReply{V: messages.Version, Name: name, Disconnected: n}, nil
}
