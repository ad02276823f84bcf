package controller

import (
	"fmt"
	"time"

	"github.com/nats-io/nats-server/v2/server"

	"github.com/guildnet/metaguildnet/messages"
)

// The controller's limits, each defined once with its default. Limits the
// agent and the CLI share (message size, task and API deadlines) are in
// messages/limits.go. A zero Options field takes the default; a value that
// cannot work is refused by Options.validate with the flag it came from and
// why, never silently changed.
//
//	limit                    flag                   default   relation
//	HeartbeatInterval        --heartbeat-interval   5s        ≥ MinHeartbeatInterval (liveness is checked every half interval)
//	StaleAfter               (fixed)                2         missed heartbeats (plus half an interval of slack) before a node is stale
//	OfflineAfter             --offline-after        6         ≥ StaleAfter + 1: a node is stale before it is offline
//	MaxMessageBytes          --max-message-bytes    1 MiB     ≥ MinMaxMessageBytes (4 KiB); value + serverPayloadMargin ≤ the NATS server's max pending (64 MiB);
//	                                                          a diagnose output is trimmed to 3/4 of 1 MiB, so below that a node's may be dropped (with a reason)
//	SweepInterval            --sweep-interval       60s       negative disables; sweeps never overlap, so one shorter than a sweep runs them back to back
//	SweepLayerIntervals      --sweep-layer-interval (none)    positive, per layer name
//	sweepTimeout             (fixed)                35s       ≥ DefaultVerifyTimeout + settleGrace: a sweep's tasks can finish inside it
//	API context per verb     (fixed)                messages.APITimeout: ≥ the verb's own longest duration
//	Retention                --retention            7 days    positive
//	HistoryRetention         --history-retention    7 days    positive
//	per-node sync requests   (fixed)                5/s, burst 10, 2 in flight   far above an agent's (one per few seconds)
//	per-node heartbeats      (fixed)                10/s or 4 per interval       above an agent's (one per interval), burst 2x
//	log lines a node causes  (fixed)                1 per kind per 10 s          refused claims: once per node a day
//	fields a node sends      (fixed)                messages/limits.go           every field bounded; listings paged by bytes
const (
	DefaultListen            = "127.0.0.1:4222"
	DefaultHeartbeatInterval = 5 * time.Second
	MinHeartbeatInterval     = 10 * time.Millisecond
	StaleAfter               = 2
	DefaultOfflineAfter      = 6
	MinOfflineAfter          = StaleAfter + 1
	MinMaxMessageBytes       = 4 << 10 // an agent keeps 1 KiB of each result for its envelope; a heartbeat with facts needs a few KiB
	DefaultSweepInterval     = time.Minute
	DefaultRetention         = 7 * 24 * time.Hour
	DefaultHistoryRetention  = 7 * 24 * time.Hour

	// serverPayloadMargin is what the embedded server allows beyond
	// MaxMessageBytes, so an oversized payload reaches the decoders, which
	// refuse it with a reason, instead of being cut off by the server.
	serverPayloadMargin = 64 << 10
	// MaxMaxMessageBytes is the largest --max-message-bytes: the NATS
	// server refuses a max payload above its max pending.
	MaxMaxMessageBytes = server.MAX_PENDING_SIZE - serverPayloadMargin

	// sweepTimeout bounds one background sweep: its verify tasks have
	// DefaultVerifyTimeout, results may settle up to settleGrace later, and
	// APIMargin is left to store the report.
	sweepTimeout = messages.DefaultVerifyTimeout + messages.APIMargin

	// maxAPIRequests bounds the API requests served at once; more are
	// refused as busy.
	maxAPIRequests = 64
)

// DefaultSetupBackoff is the first wait before a setup step's retry (it
// doubles up to 30 s).
const DefaultSetupBackoff = 2 * time.Second

// DefaultSetupVerifySettle is how long a freshly set-up layer may take to
// become healthy: a layer whose verification is not healthy is verified
// again (every second) until it is or this passes. Things setup just made
// settle on their own (CoreDNS pods after a Talos bootstrap, a workload's
// pods after its apply), as an operator would wait for them.
const DefaultSetupVerifySettle = 60 * time.Second

// resolve fills the defaults of zero fields and refuses values that cannot
// work. Its errors name the flag.
func (o *Options) resolve() error {
	if o.Listen == "" {
		o.Listen = DefaultListen
	}
	if o.HeartbeatInterval == 0 {
		o.HeartbeatInterval = DefaultHeartbeatInterval
	}
	if o.OfflineAfter == 0 {
		o.OfflineAfter = DefaultOfflineAfter
	}
	if o.MaxMessageBytes == 0 {
		o.MaxMessageBytes = messages.DefaultMaxMessageBytes
	}
	if o.Retention == 0 {
		o.Retention = DefaultRetention
	}
	if o.SweepInterval == 0 {
		o.SweepInterval = DefaultSweepInterval
	}
	if o.HistoryRetention == 0 {
		o.HistoryRetention = DefaultHistoryRetention
	}
	if o.SetupBackoff <= 0 {
		o.SetupBackoff = DefaultSetupBackoff
	}
	if o.SetupVerifySettle == 0 {
		o.SetupVerifySettle = DefaultSetupVerifySettle
	}
	return o.validate()
}

// validate refuses values that cannot work, saying why.
func (o *Options) validate() error {
	if o.HeartbeatInterval < MinHeartbeatInterval {
		return fmt.Errorf("--heartbeat-interval %v: must be at least %v (liveness is checked every half interval)", o.HeartbeatInterval, MinHeartbeatInterval)
	}
	if o.OfflineAfter < MinOfflineAfter {
		return fmt.Errorf("--offline-after %d: must be at least %d: a node is stale after %d missed heartbeats and must be stale before it is offline", o.OfflineAfter, MinOfflineAfter, StaleAfter)
	}
	if o.MaxMessageBytes < MinMaxMessageBytes || o.MaxMessageBytes > MaxMaxMessageBytes {
		return fmt.Errorf("--max-message-bytes %d: must be between %d (a heartbeat with facts must fit, and an agent keeps 1 KiB of each result for its envelope) and %d (the NATS server's max pending, less a margin)", o.MaxMessageBytes, MinMaxMessageBytes, MaxMaxMessageBytes)
	}
	if o.Retention < 0 {
		return fmt.Errorf("--retention %v: must be positive", o.Retention)
	}
	if o.HistoryRetention < 0 {
		return fmt.Errorf("--history-retention %v: must be positive", o.HistoryRetention)
	}
	for l, d := range o.SweepLayerIntervals {
		if messages.ValidLayerName(l) != nil {
			return fmt.Errorf("--sweep-layer-interval %s=%v: %q is not a layer name", l, d, l)
		}
		if d <= 0 {
			return fmt.Errorf("--sweep-layer-interval %s=%v: must be positive", l, d)
		}
	}
	if o.Advertise != "" {
		if u, err := messages.ValidateControllerURLs(o.Advertise); err != nil || len(u) != 1 {
			return fmt.Errorf("--advertise %q: want one nats://HOST:PORT (%v)", o.Advertise, err)
		}
	}
	return nil
}

// Per-node limits on what a node may ask of the controller. A node is
// untrusted: these keep one node (or a stolen identity) from growing the
// controller's memory or starving the rest of the fleet. An honest agent
// syncs every few seconds and beats every interval, far below them.
const (
	// syncRate and syncBurst bound sync requests per node (per second and
	// at once); syncInFlight bounds the answers one node may have pending.
	syncRate     = 5
	syncBurst    = 10
	syncInFlight = 2
	// heartbeatRate bounds heartbeats per node per second, or four per
	// heartbeat interval when that is more (short intervals in tests);
	// the burst is twice the rate.
	heartbeatRate = 10
)

func heartbeatLimiter(interval time.Duration) *nodeLimiter {
	rate := max(heartbeatRate, 4/interval.Seconds())
	return newNodeLimiter(rate, 2*rate, 0)
}

// maxClosedClients is how many closed connections the embedded servers
// keep for monitoring (/connz?state=closed, which nothing here serves).
// NATS' default of 10,000 kept every enrollment connection of a 10,000-node
// fleet, with its subscriptions, long after it closed (~0.7 KiB each).
const maxClosedClients = 64
