package steps

import (
	"encoding/json"
	"testing"
)

// The Undo data of the cluster family's steps comes back from the
// controller: its decoders never panic, and what they accept re-encodes
// to something they accept again.

func FuzzParseAddonUndo(f *testing.F) {
	for _, s := range []string{
		`{"objects":[{"version":"v1","resource":"namespaces","name":"apps","created":true}]}`,
		`{"objects":[{"group":"metallb.io","version":"v1beta1","resource":"ipaddresspools","namespace":"metallb-system","name":"workspaces","previous":{"metadata":{"name":"workspaces","namespace":"metallb-system"},"spec":{"addresses":["10.0.0.1/32"]}}}]}`,
		`{"objects":[{"version":"v1","resource":"secrets","name":"x","created":true}]}`,
		`null`, ``, `{}`, `{"objects":null}`, `[]`, "\x00",
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := parseAddonUndo(data)
		if err != nil {
			return
		}
		b, err := json.Marshal(u)
		if err != nil {
			t.Fatalf("re-encode: %v", err)
		}
		if _, err := parseAddonUndo(b); err != nil {
			t.Fatalf("accepted %q, refused its re-encoding %q: %v", data, b, err)
		}
	})
}

func FuzzParseMachineConfigUndo(f *testing.F) {
	for _, s := range []string{
		`{"endpoint":"127.0.0.1:50000","created":true}`,
		`{"endpoint":"127.0.0.1:50000","previous_sha256":"e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}`,
		`{"endpoint":"x"}`, `{}`, `null`, ``, `{"endpoint":"127.0.0.1:1","previous_sha256":"zz"}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := parseMachineConfigUndo(data)
		if err != nil {
			return
		}
		b, _ := json.Marshal(u)
		if _, err := parseMachineConfigUndo(b); err != nil {
			t.Fatalf("accepted %q, refused its re-encoding %q: %v", data, b, err)
		}
	})
}

func FuzzParseInstallUndo(f *testing.F) {
	for _, s := range []string{
		`{"created":["kubeconfig","talosconfig"]}`, `{"replaced":["kubeconfig"]}`,
		`{"created":["../../etc/passwd"]}`, `{}`, `null`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		u, err := parseInstallUndo(data)
		if err != nil {
			return
		}
		for _, n := range append(u.Created, u.Replaced...) {
			if !validStateName(n) {
				t.Fatalf("accepted file %q", n)
			}
		}
	})
}
