package controller

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats-server/v2/server"
	"github.com/nats-io/nats.go"
	"go.uber.org/zap"

	"github.com/guildnet/metaguildnet/messages"
)

// reply answers a request with v, or with an ErrorReply when err is set. It
// answers only under inbox, the requester's own inbox family (a node's, an
// enrolling key's, the operator's): a reply subject anywhere else is the
// requester asking the controller to write for it, and is dropped and
// counted. The connections that reply are also limited to inbox families
// (auth.go), so this is the second of two locks.
func (c *Controller) reply(m *nats.Msg, kind, inbox string, v messages.Message, err error) {
	if m.Reply == "" {
		c.met.replyDropped(kind)
		return
	}
	if !messages.ReplyUnder(m.Reply, inbox) {
		c.met.replyDropped(kind)
		c.logRate.warn(c.log, "reply:"+kind+":"+m.Subject, "dropped a reply to a subject outside the requester's inbox",
			zap.String("kind", kind), zap.String("request_subject", m.Subject), zap.String("reply_subject", trimSubject(m.Reply)))
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

// trimSubject shortens a subject a requester chose before it is logged.
func trimSubject(s string) string {
	if len(s) > 128 {
		return s[:128] + "..."
	}
	return s
}

// replyOK reports whether a request's reply subject is under the
// requester's inbox; a request that names any other is not served at all
// (a request that is served but not answered would still act for the
// requester), and is counted and logged (rate-limited).
func (c *Controller) replyOK(m *nats.Msg, kind, inbox string) bool {
	if messages.ReplyUnder(m.Reply, inbox) {
		return true
	}
	c.reply(m, kind, inbox, nil, nil) // counts and logs the drop
	return false
}

func (c *Controller) onEnroll(m *nats.Msg) {
	pub := strings.TrimPrefix(m.Subject, messages.EnrollPrefix)
	inbox := messages.EnrollInbox(pub)
	if !c.replyOK(m, "enroll", inbox) {
		return
	}
	req, err := messages.Decode[messages.EnrollRequest](m.Data, c.opts.MaxMessageBytes)
	if err != nil {
		c.reply(m, "enroll", inbox, nil, err)
		return
	}
	process := func() {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		defer cancel()
		claims, err := c.enroll(ctx, pub, req)
		if err != nil {
			c.log.Info("enrollment refused", zap.String("node", req.Name), zap.Error(err))
			c.reply(m, "enroll", inbox, nil, err)
			return
		}
		c.log.Info("node enrolled", zap.String("node", req.Name), zap.String("cluster", claims.Cluster), zap.String("role", claims.Role))
		c.changed("enrolled")
		c.reply(m, "enroll", inbox, &messages.EnrollReply{V: messages.Version, Name: req.Name,
			HeartbeatInterval: c.opts.HeartbeatInterval.String(), MaxMessageBytes: c.opts.MaxMessageBytes, Node: &claims}, nil)
	}
	if _, ok := c.auth.pendingFor(pub); ok || c.lease == nil {
		process()
		return
	}
	// In a cluster the agent may have connected to another peer, whose
	// notice of the attempt can trail its request (cluster.go): wait for
	// it beside the responder, which must not stall the fleet's
	// heartbeats and results.
	select {
	case c.enrollWait <- struct{}{}:
	default:
		c.reply(m, "enroll", inbox, nil, messages.Errorf(messages.CodeUnavailable, "controller busy with enrollments: retry"))
		return
	}
	go func() {
		defer func() { <-c.enrollWait }()
		deadline := time.Now().Add(2 * time.Second)
		for time.Now().Before(deadline) {
			if _, ok := c.auth.pendingFor(pub); ok {
				break
			}
			time.Sleep(20 * time.Millisecond)
		}
		process()
	}()
}

// enroll checks everything that can refuse an enrollment before it spends
// the join token, and gives the token back if storing the node fails: a
// refused enrollment never burns a single-use token. Once enrolled, the
// enrollment connection is closed (the agent reconnects with its key).
func (c *Controller) enroll(ctx context.Context, pub string, req messages.EnrollRequest) (messages.NodeClaims, error) {
	p, ok := c.auth.pendingFor(pub)
	if !ok {
		// Only a connection some peer admitted with a valid token can ask
		// (enrollPermissions): the attempt is one whose peer's notice has
		// not arrived yet, or one dropped to make room. Either way the
		// agent is legitimate and its next connection will be known.
		return messages.NodeClaims{}, messages.Errorf(messages.CodeUnavailable, "no enrollment in progress for this key on the active controller yet: reconnect with the join token and retry")
	}
	if cl, ok := c.reg.enrolledAs(pub, req.Name); ok {
		// The same key asks again (its first reply was lost): it is
		// enrolled already, and no token is spent twice.
		c.auth.endPending(pub)
		return cl, nil
	}
	tok, err := c.tokens.record(p.tokenHash)
	if err != nil {
		return messages.NodeClaims{}, messages.Errorf(messages.CodeBadRequest, "%v", err)
	}
	claims, err := scopeClaims(req, tok.Scope)
	if err != nil {
		return claims, err
	}
	if err := c.reg.canEnroll(pub, req.Name); err != nil {
		return claims, err
	}
	undo, err := c.tokens.consume(ctx, p.tokenHash, req.Name)
	if errors.Is(err, errTokenSpent) {
		return claims, messages.Errorf(messages.CodeBadRequest, "%v", err)
	}
	if err != nil { // the token store's write: not the request's fault
		return claims, messages.Errorf(messages.CodeUnavailable, "%v", err)
	}
	if claims, err = c.reg.enroll(ctx, pub, req, claims); err != nil {
		undo(ctx)
		return claims, err
	}
	c.auth.endPending(pub)
	c.auth.addNode(pub, req.Name)
	c.nc.Publish(messages.RelayChangedSubject, nil) // relays learn the key (relay.go)
	// Let the reply go out first; the agent closes the connection itself
	// as soon as it has read it.
	if p.clientID != 0 {
		time.AfterFunc(time.Second, func() { c.ns.DisconnectClientByID(p.clientID) })
	}
	return claims, nil
}

// admit takes a token from node's bucket in l; a message over the limit
// is dropped, counted and logged (rate-limited).
func (c *Controller) admit(l *nodeLimiter, kind, node string) bool {
	if l.allow(node, time.Now()) {
		return true
	}
	c.met.refused(kind, "rate_limited")
	c.logRate.warn(c.log, kind+"-rate:"+node, kind+" messages over the per-node limit dropped", zap.String("node", node))
	return false
}

func (c *Controller) onHeartbeat(m *nats.Msg) {
	node, err := messages.NodeFromSubject(messages.HeartbeatPfx, m.Subject)
	if err != nil {
		c.met.refused("heartbeat", "bad_subject")
		return
	}
	if !c.admit(c.hbLimit, "heartbeat", node) {
		return
	}
	hb, err := messages.Decode[messages.Heartbeat](m.Data, c.opts.MaxMessageBytes)
	if err != nil {
		c.met.refused("heartbeat", messages.CodeOf(err))
		c.logRate.warn(c.log, "hb-bad:"+node, "refused heartbeat", zap.String("node", node), zap.Error(err))
		return
	}
	prev, ok, err := c.reg.heartbeat(node, hb, time.Now().UTC())
	if err != nil {
		c.met.refused("heartbeat", "claims")
		c.logOnce.warn(c.log, "hb-claims:"+node+":"+err.Error(), "refused heartbeat", zap.String("node", node), zap.Error(err))
		return
	}
	c.met.heartbeats.Inc()
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
	inbox := messages.NodeInbox(node)
	if !c.replyOK(m, "sync", inbox) {
		return
	}
	if !c.admit(c.syncLimit, "sync", node) {
		return
	}
	req, err := messages.Decode[messages.SyncRequest](m.Data, c.opts.MaxMessageBytes)
	if err != nil {
		c.syncLimit.done(node)
		c.reply(m, "sync", inbox, nil, err)
		return
	}
	// The answer may wait for recovery and for the result store: other
	// syncs go on meanwhile. Without an answer the agent asks again.
	go func() {
		defer c.syncLimit.done(node)
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
		rep := &messages.SyncReply{V: messages.Version, Tasks: tasks, HeartbeatInterval: c.opts.HeartbeatInterval.String()}
		if cl, ok := c.reg.claims(node); ok && cl.Rev != req.ClaimsRev {
			rep.Node = &cl
		}
		c.reply(m, "sync", inbox, rep, nil)
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
	if !c.replyOK(m, "api", messages.OperatorInboxPrefix) {
		return
	}
	select {
	case c.apiSem <- struct{}{}:
	default:
		c.reply(m, "api", messages.OperatorInboxPrefix, nil, messages.Errorf(messages.CodeInternal, "controller busy: too many API requests in flight, retry"))
		return
	}
	go func() {
		defer func() { <-c.apiSem }()
		verb := strings.TrimPrefix(m.Subject, messages.APIPrefix)
		ctx, cancel := context.WithTimeout(context.Background(), messages.APITimeout(verb))
		defer cancel()
		v, err := c.api(ctx, verb, m.Data)
		c.reply(m, "api", messages.OperatorInboxPrefix, v, err)
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
		// Paged by bytes as well as rows: a node decides how large its
		// facts are (within messages' bounds), so rows are measured.
		// A page carries a line for each cluster of its nodes (nodes come
		// sorted by cluster), measured with the first of them.
		first := true
		lo, hi, next := messages.PageBySize(req.Offset, req.Limit, messages.MaxPage, st.Total, c.opts.MaxMessageBytes/2, func(i int) int {
			n := &st.Nodes[i]
			n.Layers, n.LastVerified = c.ver.layersOf(n.Name)
			b, _ := json.Marshal(n)
			size := len(b) + 1
			if first || n.Cluster != st.Nodes[i-1].Cluster {
				first = false
				cs := c.ver.clusterStatus(n.Cluster)
				st.Clusters = append(st.Clusters, cs)
				b, _ := json.Marshal(&cs)
				size += len(b) + 1
			}
			return size
		})
		st.Nodes, st.NextOffset = st.Nodes[lo:hi], next
		// The last row measured may not have fitted; neither does its cluster.
		if hi > lo {
			last := st.Nodes[len(st.Nodes)-1].Cluster
			for len(st.Clusters) > 0 && st.Clusters[len(st.Clusters)-1].Name != last {
				st.Clusters = st.Clusters[:len(st.Clusters)-1]
			}
		} else {
			st.Clusters = nil
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
		urls := c.joinURLs()
		if len(req.URLs) > 0 {
			urls = req.URLs // e.g. a site's relay (docs/HA.md)
		}
		tok, rec, err := c.tokens.create(ctx, ttl, req.Reusable, req.Scope, urls)
		if err != nil {
			return nil, err
		}
		c.log.Info("join token created", zap.Time("expires_at", rec.ExpiresAt), zap.Bool("reusable", rec.Reusable),
			zap.String("scope_cluster", rec.Scope.Cluster), zap.Strings("scope_roles", rec.Scope.Roles))
		return &messages.TokenCreateReply{V: messages.Version, Token: tok, ExpiresAt: rec.ExpiresAt, Reusable: rec.Reusable, Scope: rec.Scope}, nil
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
	case messages.APISetupPlan, messages.APISetupApply:
		req, err := messages.Decode[messages.SetupRequest](data, max)
		if err != nil {
			return nil, err
		}
		if verb == messages.APISetupPlan {
			rep, err := c.setup.plan(ctx, req)
			if err != nil {
				return nil, err
			}
			return &rep, nil
		}
		id, err := c.setup.apply(ctx, req)
		if err != nil {
			return nil, err
		}
		return &messages.SetupApplyReply{V: messages.Version, RunID: id}, nil
	case messages.APISetupStatus:
		req, err := messages.Decode[messages.SetupStatusRequest](data, max)
		if err != nil {
			return nil, err
		}
		rep, err := c.setup.status(ctx, req.RunID)
		if err != nil {
			return nil, err
		}
		return &rep, nil
	case messages.APIRolloutStart, messages.APIRolloutStatus, messages.APIRolloutList, messages.APIRolloutPause,
		messages.APIRolloutResume, messages.APIRolloutAbort, messages.APIRolloutDiff:
		return c.rolloutAPI(ctx, verb, data)
	case messages.APINodesSet:
		req, err := messages.Decode[messages.NodesSetRequest](data, max)
		if err != nil {
			return nil, err
		}
		cl, err := c.reg.set(ctx, req)
		if err != nil {
			return nil, err
		}
		c.log.Info("node claims changed by the operator", zap.String("node", req.Name), zap.String("cluster", cl.Cluster),
			zap.String("role", cl.Role), zap.Any("labels", cl.Labels), zap.Uint64("rev", cl.Rev))
		return &messages.NodesSetReply{V: messages.Version, Name: req.Name, Node: cl}, nil
	case messages.APIDashboardLogin:
		req, err := messages.Decode[messages.DashboardLoginRequest](data, max)
		if err != nil {
			return nil, err
		}
		return c.dashboardLogin(req)
	}
	return nil, messages.Errorf(messages.CodeUnknownKind, "unknown API verb %q", verb)
}

// removeNode revokes a node at once: its key is forgotten (so reconnects
// are refused), every live connection of that identity is closed, however
// many it opened, and its open tasks settle.
func (c *Controller) removeNode(ctx context.Context, name string) (messages.Message, error) {
	pub, err := c.reg.remove(ctx, name)
	if pub == "" {
		return nil, err
	}
	c.auth.removeNode(pub)
	c.nc.Publish(messages.RelayChangedSubject, nil)
	n := c.disconnectKey(pub)
	c.syncLimit.forget(name)
	c.hbLimit.forget(name)
	c.disp.nodeRemoved(name)
	c.log.Info("node removed", zap.String("node", name), zap.Int("disconnected", n))
	c.announce(transition{name, "enrolled", "removed"})
	if err != nil {
		return nil, err
	}
	return &messages.NodesRemoveReply{V: messages.Version, Name: name, Disconnected: n}, nil
}

// disconnectKey closes every open connection the server has for the NKey
// pub, asking the server rather than remembering ids: nothing is missed
// however many connections one identity opened. The authenticator no
// longer admits the key, so none can come back; a connection that was
// between its check and its registration when the first pass ran is
// caught by the second.
func (c *Controller) disconnectKey(pub string) int {
	n := 0
	for pass := 0; pass < 2; pass++ {
		cz, err := c.ns.Connz(&server.ConnzOptions{User: pub, State: server.ConnOpen, Limit: 1 << 20})
		if err != nil {
			c.log.Warn("list connections", zap.String("key", pub), zap.Error(err))
			break
		}
		for _, ci := range cz.Conns {
			if c.ns.DisconnectClientByID(ci.Cid) == nil {
				n++
			}
		}
		if pass == 0 {
			time.Sleep(50 * time.Millisecond)
		}
	}
	return n
}
