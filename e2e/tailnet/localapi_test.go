package tailnet

import (
	"encoding/json"
	"net"
	"net/http"
	"os"
	"testing"
)

// fakeLocalAPI serves tailscaled's LocalAPI status and ping on a unix
// socket: a host whose tailscaled runs with tailnet address ip and reaches
// every peer through DERP region "headscale" in 1.25 ms.
func fakeLocalAPI(t *testing.T, sock, ip string) func() {
	t.Helper()
	os.Remove(sock)
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("/localapi/v0/status", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"Version": "1.102.5", "BackendState": "Running", "TailscaleIPs": []string{ip},
			"Self": map[string]any{"HostName": "host", "TailscaleIPs": []string{ip}},
		})
	})
	mux.HandleFunc("POST /localapi/v0/ping", func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Content-Type", "application/json")
		json.NewEncoder(w).Encode(map[string]any{
			"IP": r.URL.Query().Get("ip"), "NodeIP": r.URL.Query().Get("ip"), "LatencySeconds": 0.00125,
			"DERPRegionID": 999, "DERPRegionCode": "headscale",
		})
	})
	srv := &http.Server{Handler: mux}
	go srv.Serve(ln)
	return func() { srv.Close() }
}
