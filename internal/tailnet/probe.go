package tailnet

import (
	"context"
	"net/netip"
	"strings"
	"time"

	"tailscale.com/tailcfg"

	"github.com/guildnet/metaguildnet/messages"
)

// Probe pings peer (a tailnet IP) through lc and reports the node's tailnet
// facts: its own name and addresses, and the path to peer with its RTT.
// Errors end up in the facts (Path unknown, Error set), never returned.
func Probe(ctx context.Context, lc LocalAPI, mode string, peer netip.Addr) messages.TailnetFacts {
	f := messages.TailnetFacts{Mode: mode, Path: messages.PathUnknown}
	if peer.IsValid() {
		f.ControllerIP = peer.String()
	}
	sctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	st, err := lc.Status(sctx)
	cancel()
	if err != nil {
		f.Error = "status: " + err.Error()
		return f
	}
	if st.Self != nil {
		f.Hostname = st.Self.HostName
	}
	for _, ip := range st.TailscaleIPs {
		f.IPs = append(f.IPs, ip.String())
	}
	if !peer.IsValid() {
		f.Error = "no controller address on the tailnet"
		return f
	}
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	res, err := lc.Ping(pctx, peer, tailcfg.PingDisco)
	cancel()
	switch {
	case err != nil:
		f.Error = "ping: " + err.Error()
	case res.Err != "":
		f.Error = "ping: " + res.Err
	default:
		f.RTTMS = float64(time.Duration(res.LatencySeconds*float64(time.Second)).Microseconds()) / 1000
		switch {
		case res.Endpoint != "":
			f.Path, f.Endpoint = messages.PathDirect, res.Endpoint
		case res.PeerRelay != "":
			f.Path, f.Endpoint = messages.PathPeerRelay, res.PeerRelay
		case res.DERPRegionID != 0:
			f.Path, f.DERPRegion = messages.PathDERP, res.DERPRegionCode
		}
	}
	// The peer's status tells the path too when the ping did not.
	if f.Path == messages.PathUnknown {
		for _, p := range st.Peer {
			if !hasIP(p.TailscaleIPs, peer) {
				continue
			}
			switch {
			case p.CurAddr != "":
				f.Path, f.Endpoint = messages.PathDirect, p.CurAddr
			case p.PeerRelay != "":
				f.Path, f.Endpoint = messages.PathPeerRelay, p.PeerRelay
			case p.Relay != "" && p.Online:
				f.Path, f.DERPRegion = messages.PathDERP, p.Relay
			}
		}
	}
	if f.Path == messages.PathDERP && f.DERPRegion == "" {
		f.DERPRegion = "?"
	}
	f.Error = strings.TrimSpace(f.Error)
	if len(f.Error) > 1000 {
		f.Error = f.Error[:1000]
	}
	return f
}

func hasIP(ips []netip.Addr, ip netip.Addr) bool {
	for _, x := range ips {
		if x == ip {
			return true
		}
	}
	return false
}
