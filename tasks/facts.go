package tasks

import (
	"context"
	"encoding/json"
	"net"
	"os"
	"runtime"
	"strings"
	"sync"

	"github.com/guildnet/metaguildnet/internal/procinfo"
	"github.com/guildnet/metaguildnet/messages"
)

// FactsTask reports the node's facts (the same ones heartbeats carry).
type FactsTask struct{}

func (FactsTask) Kind() string { return "facts" }

func (FactsTask) Run(ctx context.Context, env *Env, _ json.RawMessage) (Output, error) {
	return Output{Outcome: messages.OutcomeOK, Data: CollectFacts(env.Version)}, nil
}

// CollectFacts reads what a node is: host name, OS, kernel, CPUs, memory and
// addresses. It reads /proc and the interface list only, so it is cheap
// enough to run with every heartbeat.
func CollectFacts(agentVersion string) messages.Facts {
	f := messages.Facts{
		OS:           runtime.GOOS,
		Arch:         runtime.GOARCH,
		CPUs:         runtime.NumCPU(),
		AgentVersion: agentVersion,
	}
	f.Hostname, _ = os.Hostname()
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		f.Kernel = strings.TrimSpace(string(b))
	}
	f.MemoryBytes = memTotal()
	f.BootTime = bootTime()
	f.Addresses, f.TailnetIPs = addresses()
	return f
}

func memTotal() uint64 {
	proc, err := procinfo.Open("")
	if err != nil {
		return 0
	}
	m, err := proc.Memory()
	if err != nil {
		return 0
	}
	return m.Total
}

// bootTime is read once: it does not change while the process runs.
var bootTime = sync.OnceValue(readBootTime)

func readBootTime() int64 {
	proc, err := procinfo.Open("")
	if err != nil {
		return 0
	}
	t, err := proc.BootTime()
	if err != nil {
		return 0
	}
	return t
}

// tailnetV4 is Tailscale's CGNAT range and tailnetV6 its ULA range; addresses
// in them are reported as tailnet IPs.
var (
	_, tailnetV4, _ = net.ParseCIDR("100.64.0.0/10")
	_, tailnetV6, _ = net.ParseCIDR("fd7a:115c:a1e0::/48")
)

func addresses() (all, tailnet []string) {
	for _, ip := range upIPs() {
		if ip.IsLinkLocalUnicast() {
			continue
		}
		s := ip.String()
		all = append(all, s)
		if tailnetV4.Contains(ip) || tailnetV6.Contains(ip) {
			tailnet = append(tailnet, s)
		}
	}
	return all, tailnet
}

// upIPsPortable lists the addresses of the interfaces that are up, one
// interface at a time (on Linux that is two netlink dumps per interface;
// facts_linux.go needs two in all).
func upIPsPortable() []net.IP {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	var out []net.IP
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp == 0 {
			continue
		}
		addrs, err := ifc.Addrs()
		if err != nil {
			continue
		}
		for _, a := range addrs {
			if ipn, ok := a.(*net.IPNet); ok {
				out = append(out, ipn.IP)
			}
		}
	}
	return out
}
