package main

// The bare world's control endpoint (TESTWORLD_CONTROL in DIR/env, on
// 127.0.0.1 only): what the stand-ins count, for tests that must show an
// apply wrote nothing, and the fault knobs that only exist as Go methods
// inside this process.
//
//	GET  $TESTWORLD_CONTROL/talos
//	     [{"node","cluster","state","applied_configs","bootstrapped","maintenance"}]
//	POST $TESTWORLD_CONTROL/talos/refusing?on=true|false[&node=NAME]
//	     every Talos apid stand-in (or NAME's) refuses every call while on
//	     ("connection refused", as an apid that is restarting)

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"strconv"
	"time"
)

// talosStat is one Talos stand-in's counters.
type talosStat struct {
	Node           string `json:"node"`
	Cluster        string `json:"cluster"`
	State          string `json:"state"`
	AppliedConfigs int    `json:"applied_configs"`
	Bootstrapped   bool   `json:"bootstrapped"`
	Maintenance    bool   `json:"maintenance"`
}

func (w *world) startControl() error {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("control endpoint: %w", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /talos", func(rw http.ResponseWriter, _ *http.Request) {
		var out []talosStat
		for _, c := range w.bare.clusters {
			for _, n := range c.nodes {
				if n.talos == nil {
					continue
				}
				out = append(out, talosStat{Node: n.name, Cluster: c.name, State: n.talos.State(), AppliedConfigs: n.talos.AppliedConfigs(),
					Bootstrapped: n.talos.Bootstrapped(), Maintenance: n.talos.InMaintenance()})
			}
		}
		rw.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(rw).Encode(out)
	})
	mux.HandleFunc("POST /talos/refusing", func(rw http.ResponseWriter, r *http.Request) {
		on, err := strconv.ParseBool(r.URL.Query().Get("on"))
		if err != nil {
			http.Error(rw, "on: want true or false", http.StatusBadRequest)
			return
		}
		node, hit := r.URL.Query().Get("node"), 0
		for _, c := range w.bare.clusters {
			for _, n := range c.nodes {
				if n.talos != nil && (node == "" || node == n.name) {
					n.talos.SetRefusing(on)
					hit++
				}
			}
		}
		if hit == 0 {
			http.Error(rw, "no Talos stand-in named "+strconv.Quote(node), http.StatusNotFound)
			return
		}
		log("fault knob: %d Talos stand-in(s) refusing=%t", hit, on)
		fmt.Fprintf(rw, "%d\n", hit)
	})
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() { _ = srv.Serve(ln) }()
	w.closers = append(w.closers, func() {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		defer cancel()
		_ = srv.Shutdown(ctx)
	})
	url := "http://" + ln.Addr().String()
	w.add("TESTWORLD_CONTROL", url, "counters and fault knobs: GET /talos, POST /talos/refusing?on=true[&node=NAME]")
	log("control endpoint %s", url)
	return nil
}
