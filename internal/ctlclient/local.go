package ctlclient

import (
	"context"
	"net"
	"time"

	"github.com/nats-io/nats.go"

	"github.com/guildnet/metaguildnet/internal/runinfo"
)

// unixDialer dials the controller's local socket whatever address nats.go
// asks for: in tailnet and TLS mode the CLI does not use TCP on the host.
type unixDialer struct{ path string }

func (d unixDialer) Dial(_, _ string) (net.Conn, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var nd net.Dialer
	return nd.DialContext(ctx, "unix", d.path)
}

// localOptions are the connection options for the controller's local
// socket, or nil when it publishes none.
func localOptions(info runinfo.Info) []nats.Option {
	if info.LocalSocket == "" {
		return nil
	}
	return []nats.Option{nats.SetCustomDialer(unixDialer{info.LocalSocket}), nats.SkipHostLookup()}
}
