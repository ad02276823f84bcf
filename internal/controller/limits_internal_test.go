package controller

import (
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// The relations between limits that limits.go states hold for the values
// defined there.
func TestLimitRelations(t *testing.T) {
	for _, tt := range []struct {
		what     string
		got, min time.Duration
	}{
		{"API context for verify ≥ longest verify tasks + settle grace", messages.APITimeout(messages.APIVerify), messages.MaxVerifyTimeout + settleGrace},
		{"API context for diagnose ≥ its verification and diagnose tasks + settle grace", messages.APITimeout(messages.APIDiagnose), max(messages.DefaultVerifyTimeout, messages.DiagnoseTaskTimeout) + settleGrace},
		{"API context for task.wait ≥ longest wait", messages.APITimeout(messages.APITaskWait), messages.MaxTaskWait},
		{"API context for other verbs > 0", messages.APITimeout(messages.APIStatus), time.Second},
		{"sweep context ≥ its verify tasks + settle grace", sweepTimeout, messages.DefaultVerifyTimeout + settleGrace},
		{"default heartbeat ≥ minimum", DefaultHeartbeatInterval, MinHeartbeatInterval},
	} {
		if tt.got < tt.min {
			t.Errorf("%s: %v < %v", tt.what, tt.got, tt.min)
		}
	}
	if DefaultOfflineAfter < MinOfflineAfter || MinOfflineAfter <= StaleAfter {
		t.Errorf("offline-after: default %d, minimum %d, stale after %d", DefaultOfflineAfter, MinOfflineAfter, StaleAfter)
	}
	if messages.DefaultMaxMessageBytes < MinMaxMessageBytes || messages.DefaultMaxMessageBytes > MaxMaxMessageBytes {
		t.Errorf("default message size %d outside [%d, %d]", messages.DefaultMaxMessageBytes, MinMaxMessageBytes, MaxMaxMessageBytes)
	}
}

// Zero options take the defaults; bad ones are refused naming the flag,
// and nothing is changed silently.
func TestOptionsResolve(t *testing.T) {
	var o Options
	if err := o.resolve(); err != nil {
		t.Fatal(err)
	}
	if o.HeartbeatInterval != DefaultHeartbeatInterval || o.OfflineAfter != DefaultOfflineAfter || o.MaxMessageBytes != messages.DefaultMaxMessageBytes ||
		o.SweepInterval != DefaultSweepInterval || o.Listen != DefaultListen || o.Retention != DefaultRetention || o.HistoryRetention != DefaultHistoryRetention {
		t.Errorf("defaults: %+v", o)
	}
	for _, tt := range []struct {
		mod  func(*Options)
		want string
	}{
		{func(o *Options) { o.OfflineAfter = 2 }, "--offline-after 2: must be at least 3"},
		{func(o *Options) { o.OfflineAfter = 1 }, "--offline-after 1"},
		{func(o *Options) { o.HeartbeatInterval = -time.Second }, "--heartbeat-interval -1s"},
		{func(o *Options) { o.HeartbeatInterval = time.Nanosecond }, "--heartbeat-interval 1ns: must be at least 10ms"},
		{func(o *Options) { o.MaxMessageBytes = -1 }, "--max-message-bytes -1"},
		{func(o *Options) { o.MaxMessageBytes = MaxMaxMessageBytes + 1 }, "--max-message-bytes"},
		{func(o *Options) { o.Retention = -time.Hour }, "--retention"},
		{func(o *Options) { o.HistoryRetention = -time.Hour }, "--history-retention"},
		{func(o *Options) { o.SweepLayerIntervals = map[string]time.Duration{"host": 0} }, "--sweep-layer-interval host=0s: must be positive"},
		{func(o *Options) { o.SweepLayerIntervals = map[string]time.Duration{"a b": time.Second} }, `"a b" is not a layer name`},
	} {
		o := Options{}
		tt.mod(&o)
		before := o
		err := o.resolve()
		if err == nil || !strings.Contains(err.Error(), tt.want) {
			t.Errorf("%+v: err %v, want %q", before, err, tt.want)
		}
	}
	// A negative sweep interval disables sweeps; it is kept, not changed.
	o = Options{SweepInterval: -1}
	if err := o.resolve(); err != nil || o.SweepInterval != -1 {
		t.Errorf("negative sweep interval: %v, %v", o.SweepInterval, err)
	}
}
