package controller

import (
	"bytes"
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/nats-io/nats.go/jetstream"

	"github.com/guildnet/metaguildnet/diagnostics"
	"github.com/guildnet/metaguildnet/diagnostics/rules"
	"github.com/guildnet/metaguildnet/messages"
)

// diagnose runs verification and the nodes' diagnose collectors side by
// side, then analyses both with the rules: one cause, reported once, with
// its symptoms and the nodes it affects.
func (c *Controller) diagnose(ctx context.Context, req messages.DiagnoseRequest) (messages.DiagnoseReply, error) {
	var targets []string
	states := map[string]string{}
	for _, m := range c.reg.members() {
		if (req.Node == "" || m.name == req.Node) && (req.Cluster == "" || m.cluster == req.Cluster) {
			targets = append(targets, m.name)
			states[m.name] = m.state
		}
	}
	if len(targets) == 0 {
		return messages.DiagnoseReply{}, messages.Errorf(messages.CodeNotFound, "nothing to diagnose: no node matches (see `controller status`)")
	}
	run, err := c.disp.issueTo(ctx, messages.RunRequest{Kind: "diagnose", Target: "diagnose", Timeout: messages.DiagnoseTaskTimeout.String(), SkipOffline: true}, targets, states)
	if err != nil {
		return messages.DiagnoseReply{}, fmt.Errorf("diagnose: %w", err)
	}
	rep, _, verr := c.ver.run(ctx, messages.VerifyRequest{V: messages.Version, Node: req.Node, Cluster: req.Cluster})
	tr, err := c.disp.wait(ctx, run.TaskID)
	if err != nil {
		return messages.DiagnoseReply{}, fmt.Errorf("diagnose: wait: %w", err)
	}
	res := messages.DiagnoseResult{V: messages.Version, Sections: map[string][]messages.Section{}}
	if verr != nil {
		res.Notes = append(res.Notes, "verification failed: "+verr.Error())
	} else {
		res.Report = &rep
	}
	inputs := diagnostics.NodesFromReport(res.Report)
	for _, r := range tr.Results {
		if r.Outcome == messages.OutcomeUnknown {
			res.Notes = append(res.Notes, fmt.Sprintf("%s: not collected (%s)", r.Node, r.Reason))
			continue
		}
		out, err := messages.Decode[messages.DiagnoseOutput](r.Output, c.opts.MaxMessageBytes)
		if err != nil {
			res.Notes = append(res.Notes, fmt.Sprintf("%s: unreadable diagnose output: %v", r.Node, err))
			continue
		}
		if out.Trimmed != "" {
			res.Notes = append(res.Notes, fmt.Sprintf("%s: trimmed: %s", r.Node, out.Trimmed))
		}
		res.Sections[r.Node] = out.Sections
		inputs = diagnostics.WithSections(inputs, r.Node, out.Sections)
	}
	kb, err := rules.Load(c.opts.RulesFile)
	if err != nil {
		res.Notes = append(res.Notes, "user rules refused, built-in rules used: "+err.Error())
		if kb, err = rules.Builtin(); err != nil {
			return messages.DiagnoseReply{}, fmt.Errorf("diagnose: rules: %w", err)
		}
	}
	res.Diagnosis = diagnostics.Analyze(kb, inputs, time.Now())
	b, err := messages.Encode(&res)
	if err != nil {
		return messages.DiagnoseReply{}, fmt.Errorf("diagnose: encode: %w", err)
	}
	id := strings.ReplaceAll("d"+time.Now().UTC().Format("20060102T150405.000000000"), ".", "-")
	if _, err := c.diagnoses.Put(ctx, jetstream.ObjectMeta{Name: id}, bytes.NewReader(b)); err != nil {
		return messages.DiagnoseReply{}, fmt.Errorf("diagnose: store: %w", err)
	}
	return messages.DiagnoseReply{V: messages.Version, ResultID: id, Status: res.Diagnosis.Status}, nil
}
