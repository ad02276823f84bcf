package messages

import (
	"fmt"
	"slices"
)

// Tailnet modes: how a node is on the tailnet.
const (
	TailnetTSNet = "tsnet" // the agent's (or controller's) own tsnet node
	TailnetHost  = "host"  // the host's tailscaled
)

// Paths from an agent to the controller across the tailnet.
const (
	PathDirect    = "direct"     // WireGuard over direct UDP
	PathDERP      = "derp"       // relayed through a DERP server
	PathPeerRelay = "peer_relay" // relayed through a peer relay
	PathUnknown   = "unknown"    // the controller did not answer a ping
)

// TailnetFacts describe a node on the tailnet and its path to the
// controller. Agents send them inside Facts when they reach the controller
// over the tailnet.
type TailnetFacts struct {
	Mode     string   `json:"mode"`               // tsnet or host
	Hostname string   `json:"hostname,omitempty"` // the node's name on the tailnet
	IPs      []string `json:"ips,omitempty"`
	// ControllerIP is the controller's tailnet address this node talks to.
	ControllerIP string `json:"controller_ip,omitempty"`
	// Path is direct, derp, peer_relay or unknown; DERPRegion names the
	// relay when Path is derp.
	Path       string  `json:"path,omitempty"`
	DERPRegion string  `json:"derp_region,omitempty"`
	Endpoint   string  `json:"endpoint,omitempty"` // the peer's UDP endpoint when direct
	RTTMS      float64 `json:"rtt_ms,omitempty"`
	// Error is why the last probe of the path failed.
	Error string `json:"error,omitempty"`
}

// Equal reports whether t and o carry the same facts (RTT included).
func (t *TailnetFacts) Equal(o *TailnetFacts) bool {
	if t == nil || o == nil {
		return t == o
	}
	return t.Mode == o.Mode && t.Hostname == o.Hostname && slices.Equal(t.IPs, o.IPs) &&
		t.ControllerIP == o.ControllerIP && t.Path == o.Path && t.DERPRegion == o.DERPRegion &&
		t.Endpoint == o.Endpoint && t.RTTMS == o.RTTMS && t.Error == o.Error
}

const maxTailnetString = 255

func (t *TailnetFacts) validate() error {
	if t == nil {
		return nil
	}
	if err := boundedList("facts.tailnet.ips", t.IPs, MaxFactAddresses, MaxAddressLen); err != nil {
		return err
	}
	for name, s := range map[string]string{"mode": t.Mode, "hostname": t.Hostname, "controller_ip": t.ControllerIP,
		"path": t.Path, "derp_region": t.DERPRegion, "endpoint": t.Endpoint} {
		if len(s) > maxTailnetString {
			return fmt.Errorf("facts: tailnet: %s longer than %d bytes", name, maxTailnetString)
		}
	}
	if len(t.Error) > 1024 {
		return fmt.Errorf("facts: tailnet: error longer than 1024 bytes")
	}
	if t.RTTMS < 0 {
		return fmt.Errorf("facts: tailnet: negative rtt_ms")
	}
	return nil
}
