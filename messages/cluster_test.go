package messages

import (
	"strconv"
	"strings"
	"testing"
)

// The per-cluster parts of reports, of the fleet view and of layer_state
// events are bounded and validated like the rest of the wire contract.
func TestDecodePerCluster(t *testing.T) {
	longReason := strings.Repeat("x", MaxStatusReason+1)
	tests := []struct {
		name    string
		decode  func([]byte) error
		in      string
		wantErr string
	}{
		{"report ok", decodeAs[Report], `{"v":1,"overall_status":"unhealthy","clusters":[{"name":"a","overall_status":"healthy","layers":[{"name":"host","status":"healthy"}]},{"name":"","overall_status":"unhealthy","layers":[{"name":"my_layer","status":"unhealthy","reason":"r"}]}]}`, ""},
		{"report without clusters", decodeAs[Report], `{"v":1,"overall_status":"healthy","layers":[]}`, ""},
		{"report cluster twice", decodeAs[Report], `{"v":1,"clusters":[{"name":"a","overall_status":"healthy","layers":[]},{"name":"a","overall_status":"healthy","layers":[]}]}`, "listed twice"},
		{"report bad cluster name", decodeAs[Report], `{"v":1,"clusters":[{"name":"a.b","overall_status":"healthy","layers":[]}]}`, "clusters[0]: name"},
		{"report bad overall", decodeAs[Report], `{"v":1,"clusters":[{"name":"a","overall_status":"fine","layers":[]}]}`, "overall_status"},
		{"report bad layer status", decodeAs[Report], `{"v":1,"clusters":[{"name":"a","overall_status":"healthy","layers":[{"name":"host","status":"pass"}]}]}`, "layers[0].status"},
		{"report layer twice", decodeAs[Report], `{"v":1,"clusters":[{"name":"a","overall_status":"healthy","layers":[{"name":"host","status":"healthy"},{"name":"host","status":"healthy"}]}]}`, "listed twice"},
		{"report empty layer name", decodeAs[Report], `{"v":1,"clusters":[{"name":"a","overall_status":"healthy","layers":[{"name":"","status":"healthy"}]}]}`, "layers[0]: name"},
		{"report long reason", decodeAs[Report], `{"v":1,"clusters":[{"name":"a","overall_status":"unknown","layers":[{"name":"host","status":"unknown","reason":"` + longReason + `"}]}]}`, "layers[0].reason"},
		{"report too many layers", decodeAs[Report], `{"v":1,"clusters":[{"name":"a","overall_status":"healthy","layers":[` + manyLayers(MaxClusterLayers+1) + `]}]}`, "at most"},
		{"status ok", decodeAs[StatusReply], `{"v":1,"nodes":[],"clusters":[{"name":"a","overall_status":"degraded","layers":{"host":"degraded"}},{"name":"b"}]}`, ""},
		{"status bad name", decodeAs[StatusReply], `{"v":1,"nodes":[],"clusters":[{"name":"a b"}]}`, "clusters[0]: name"},
		{"status bad layer status", decodeAs[StatusReply], `{"v":1,"nodes":[],"clusters":[{"name":"a","layers":{"host":"ok"}}]}`, "layers.host"},
		{"status bad overall", decodeAs[StatusReply], `{"v":1,"nodes":[],"clusters":[{"name":"a","overall_status":"ok"}]}`, "overall_status"},
		{"check layer ok", decodeAs[VerifyOutput], `{"v":1,"checks":[{"name":"c","layer":"my_layer","status":"pass"}]}`, ""},
		{"check layer not a name", decodeAs[VerifyOutput], `{"v":1,"checks":[{"name":"c","layer":"` + strings.Repeat("x", MaxNameLen+1) + `","status":"pass"}]}`, "layer"},
		{"check layer missing", decodeAs[VerifyOutput], `{"v":1,"checks":[{"name":"c","status":"pass"}]}`, "layer"},
		{"event ok", decodeAs[Event], `{"v":1,"kind":"layer_state","cluster":"a","layer":"host","from":"healthy","to":"unhealthy"}`, ""},
		{"event bad cluster", decodeAs[Event], `{"v":1,"kind":"layer_state","cluster":"a>"}`, "cluster"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			err := tt.decode([]byte(tt.in))
			if (err != nil) != (tt.wantErr != "") || err != nil && !strings.Contains(err.Error(), tt.wantErr) {
				t.Fatalf("err %v, want %q", err, tt.wantErr)
			}
		})
	}
}

func manyLayers(n int) string {
	parts := make([]string, n)
	for i := range parts {
		parts[i] = `{"name":"l` + strconv.Itoa(i) + `","status":"healthy"}`
	}
	return strings.Join(parts, ",")
}
