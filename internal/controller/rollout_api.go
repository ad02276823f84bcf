package controller

import (
	"context"

	"github.com/guildnet/metaguildnet/messages"
)

// rolloutAPI answers mgn.api.rollout.* (docs/ROLLOUT.md).
func (c *Controller) rolloutAPI(ctx context.Context, verb string, data []byte) (messages.Message, error) {
	max := c.opts.MaxMessageBytes
	switch verb {
	case messages.APIRolloutStart:
		req, err := messages.Decode[messages.RolloutStartRequest](data, max)
		if err != nil {
			return nil, err
		}
		id, err := c.rollout.start(ctx, req)
		if err != nil {
			return nil, err
		}
		return &messages.RolloutStartReply{V: messages.Version, ID: id}, nil
	case messages.APIRolloutList:
		if _, err := messages.Decode[messages.RolloutListRequest](data, max); err != nil {
			return nil, err
		}
		rep, err := c.rollout.list(ctx)
		if err != nil {
			return nil, err
		}
		return &rep, nil
	case messages.APIRolloutDiff:
		req, err := messages.Decode[messages.RolloutDiffRequest](data, max)
		if err != nil {
			return nil, err
		}
		rep, err := c.revs.diff(ctx, req.From, req.To)
		if err != nil {
			return nil, err
		}
		return &rep, nil
	}
	req, err := messages.Decode[messages.RolloutRequest](data, max)
	if err != nil {
		return nil, err
	}
	var rep messages.RolloutStatusReply
	if verb == messages.APIRolloutStatus {
		rep, err = c.rollout.status(ctx, req.ID)
	} else {
		if req.ID == "" {
			return nil, messages.Errorf(messages.CodeBadRequest, "id: name the rollout (see `controller rollout list`)")
		}
		rep, err = c.rollout.setControl(ctx, req.ID, verb)
	}
	if err != nil {
		return nil, err
	}
	return &rep, nil
}
