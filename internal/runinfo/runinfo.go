// Package runinfo is how CLI commands find the controller that was started
// with the same --data-dir: the running controller writes controller.json
// (its addresses) and keeps admin.seed (the operator's NKey) there.
package runinfo

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"

	"github.com/nats-io/nkeys"
)

const (
	infoFile  = "controller.json"
	adminSeed = "admin.seed"
)

// Info is what a running controller publishes about itself.
type Info struct {
	PID     int    `json:"pid"`
	NATSURL string `json:"nats_url"`
	HTTPURL string `json:"http_url,omitempty"`
	// LocalSocket is a unix socket for the local CLI, set when NATS does
	// not listen on the host's loopback (tailnet or TLS mode).
	LocalSocket string `json:"local_socket,omitempty"`
	// TailnetHostname is the controller's tsnet name; TLSPin and TLSCAFile
	// are set in TLS mode.
	TailnetHostname string `json:"tailnet_hostname,omitempty"`
	TLSPin          string `json:"tls_pin,omitempty"`
	TLSCAFile       string `json:"tls_ca_file,omitempty"`
	Version         string `json:"version"`
}

// Write stores info in dir atomically.
func Write(dir string, info Info) error {
	b, _ := json.MarshalIndent(info, "", "  ")
	return writeFileAtomic(filepath.Join(dir, infoFile), b, 0o644)
}

// Remove deletes the info file (on clean shutdown).
func Remove(dir string) { os.Remove(filepath.Join(dir, infoFile)) }

// ErrNotRunning means no controller has published itself in the data dir.
var ErrNotRunning = errors.New("no controller is running for this data dir")

// Read loads the info of the controller running with data dir dir.
func Read(dir string) (Info, error) {
	var info Info
	b, err := os.ReadFile(filepath.Join(dir, infoFile))
	if errors.Is(err, fs.ErrNotExist) {
		return info, fmt.Errorf("%w (%s): start it with `controller serve --data-dir %s`", ErrNotRunning, dir, dir)
	}
	if err != nil {
		return info, fmt.Errorf("read %s: %w", filepath.Join(dir, infoFile), err)
	}
	if err := json.Unmarshal(b, &info); err != nil || info.NATSURL == "" {
		return info, fmt.Errorf("%s: not a controller info file (%v)", filepath.Join(dir, infoFile), err)
	}
	return info, nil
}

// AdminKey loads the operator key from dir, creating it when create is set.
func AdminKey(dir string, create bool) (nkeys.KeyPair, error) {
	return LoadOrCreateUserKey(filepath.Join(dir, adminSeed), create)
}

// LoadOrCreateUserKey reads an NKey user seed from path; when it is missing
// and create is set, it makes one and stores it with mode 0600.
func LoadOrCreateUserKey(path string, create bool) (nkeys.KeyPair, error) {
	b, err := os.ReadFile(path)
	if err == nil {
		kp, err := nkeys.FromSeed([]byte(strings.TrimSpace(string(b))))
		if err != nil {
			return nil, fmt.Errorf("%s: not an NKey seed: %w", path, err)
		}
		return kp, nil
	}
	if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("read %s: %w", path, err)
	}
	if !create {
		return nil, fmt.Errorf("%s is missing: is this the controller's data dir?", path)
	}
	kp, err := nkeys.CreateUser()
	if err != nil {
		return nil, fmt.Errorf("create key: %w", err)
	}
	seed, _ := kp.Seed()
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return nil, fmt.Errorf("create %s: %w", filepath.Dir(path), err)
	}
	if err := writeFileAtomic(path, append(seed, '\n'), 0o600); err != nil {
		return nil, err
	}
	return kp, nil
}

func writeFileAtomic(path string, b []byte, mode os.FileMode) error {
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, mode); err != nil {
		return fmt.Errorf("write %s: %w", tmp, err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("rename %s: %w", tmp, err)
	}
	return nil
}
