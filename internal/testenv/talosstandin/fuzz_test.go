package talosstandin

import (
	"testing"

	configmachine "github.com/siderolabs/talos/pkg/machinery/config/machine"
)

// FuzzLoadConfig feeds arbitrary bytes to the ApplyConfiguration decoding
// path: it must answer an error or a config, never panic. (Fuzz with
// -fuzzminimizetime 1x: minimizing the 25 KiB seed configs is slow.)
func FuzzLoadConfig(f *testing.F) {
	s, err := Start(Options{})
	if err != nil {
		f.Fatal(err)
	}
	defer s.Close()
	for _, typ := range []configmachine.Type{configmachine.TypeControlPlane, configmachine.TypeWorker} {
		b, err := s.MachineConfig(typ)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("version: v1alpha1\nmachine:\n  type: controlplane\n"))
	f.Add([]byte("---\n---\napiVersion: v1alpha1\nkind: HostnameConfig\nhostname: x\n"))
	f.Add([]byte("\x00\xff"))
	f.Add([]byte(""))
	f.Fuzz(func(t *testing.T, data []byte) {
		cfg, _, err := loadConfig(data)
		if err == nil && cfg == nil {
			t.Fatal("no config and no error")
		}
		if err == nil {
			_ = issuingCA(cfg.Machine())
		}
	})
}
