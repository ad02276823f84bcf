package messages

import "time"

// Limits both sides share, each defined once with its default. The
// controller's own (heartbeats, liveness, sweeps) and how they relate are in
// internal/controller/limits.go; the decoders here enforce these at the edge.
const (
	// DefaultMaxMessageBytes is the default size limit for any one payload
	// (controller --max-message-bytes; agents learn the controller's on
	// enrollment).
	DefaultMaxMessageBytes = 1 << 20

	// DefaultRunTimeout and MaxRunTimeout bound RunRequest.Timeout: how
	// long nodes have for a task.
	DefaultRunTimeout = 30 * time.Second
	MaxRunTimeout     = 24 * time.Hour

	// DefaultVerifyTimeout and MaxVerifyTimeout bound VerifyRequest.Timeout,
	// the deadline of each verify task (node checks and cluster checks run
	// side by side, so a verification takes about one of them).
	DefaultVerifyTimeout = 20 * time.Second
	MaxVerifyTimeout     = 10 * time.Minute

	// DiagnoseTaskTimeout is the deadline of the diagnose task a diagnosis
	// sends to each node (its collectors stop after 5 s).
	DiagnoseTaskTimeout = 15 * time.Second

	// MaxSleep bounds the sleep task's duration (SleepArgs).
	MaxSleep = 10 * time.Minute

	// MaxTaskWait bounds TaskWaitRequest.Wait.
	MaxTaskWait = 30 * time.Second

	// DefaultTokenTTL is a join token's lifetime unless TokenCreateRequest.TTL
	// says otherwise.
	DefaultTokenTTL = 24 * time.Hour

	// APIMargin is what a request needs beyond the deadlines of the tasks
	// it waits for: the controller's settle grace (results arriving at the
	// deadline), storing a report, and the reply.
	APIMargin = 15 * time.Second

	// SetupPlanTimeout bounds a whole `setup plan` (every step planned on
	// every target), and DefaultSetupStepTimeout is one step task's
	// deadline unless SetupRequest.StepTimeout says otherwise.
	SetupPlanTimeout        = 5 * time.Minute
	DefaultSetupStepTimeout = 5 * time.Minute

	// DefaultAPITimeout is how long the controller gives a request that
	// waits for no task (status, run, token.create, report.last,
	// nodes.remove).
	DefaultAPITimeout = 40 * time.Second
)

// APITimeout is how long the controller gives one request of verb, and so
// how long a client should wait for the reply: never less than the longest
// the verb may take by its own limits.
//
//	verify     MaxVerifyTimeout + APIMargin     (tasks may run that long)
//	diagnose   DefaultVerifyTimeout + APIMargin (a verification beside the diagnose tasks, DiagnoseTaskTimeout)
//	task.wait  MaxTaskWait + APIMargin
//	others     DefaultAPITimeout
func APITimeout(verb string) time.Duration {
	switch verb {
	case APIVerify:
		return MaxVerifyTimeout + APIMargin
	case APIDiagnose:
		return max(DefaultVerifyTimeout, DiagnoseTaskTimeout) + APIMargin
	case APITaskWait:
		return max(MaxTaskWait+APIMargin, DefaultAPITimeout)
	case APISetupPlan:
		return SetupPlanTimeout + APIMargin
	}
	return DefaultAPITimeout
}

// Bounds on what a node may send. Anything a node sends is untrusted: every
// field has a limit here, checked by Validate, so that one node cannot grow
// the controller's memory, its stored records or the replies that list the
// fleet (a status page carries every node's facts).
const (
	// MaxFactString bounds each string fact (hostname, os, kernel, ...).
	MaxFactString = 255
	// MaxFactAddresses bounds Facts.Addresses and Facts.TailnetIPs, and
	// MaxAddressLen each of their entries (an IPv6 address with a prefix
	// and a zone fits).
	MaxFactAddresses = 64
	MaxAddressLen    = 64
	// MaxRunning bounds Heartbeat.Running.
	MaxRunning = 256
	// maxListItems bounds other lists in payloads (names of layers and
	// checks in task arguments).
	maxListItems = 256
	// MaxReasonLen bounds Result.Reason.
	MaxReasonLen = 1024
	// MaxSealedBytes bounds Task.Sealed and Result.Sealed (a Talos machine
	// config with its secrets is ~40 KiB, a kubeconfig ~8 KiB), and
	// MaxSealedKeys the number of values in one.
	MaxSealedBytes = 256 << 10
	MaxSealedKeys  = 16
	// MaxNodeRowBytes is about the largest a node's row in the fleet view
	// can be when every bound above is used; status pages are sized by it.
	MaxNodeRowBytes = 24 << 10
)
