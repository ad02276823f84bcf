// Command image builds the OCI images of the agent and the controller without
// Docker: a static binary (CGO_ENABLED=0, -trimpath, version stamped with
// -ldflags) in one layer on an empty base, written as an OCI archive
// that `ctr images import`, `docker load` (Docker 25+), `podman load` and
// `skopeo copy oci-archive:...` accept. Every timestamp is the build date
// given (the commit's date), so building one commit twice gives the same
// image digest and the same tarball bytes.
//
// The tarball is an OCI image layout archive ("oci-archive"): unlike a
// docker-archive, it carries the manifest itself, so the digest printed here
// is the one containerd, a registry and skopeo see.
//
//	go run ./hack/image -version v1.2.3 -commit SHA -date 2026-11-29T20:00:00Z -out bin agent controller
//
// It lives under hack/ so that go-containerregistry never reaches the agent
// or controller binaries.
package main

import (
	"archive/tar"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"time"

	"github.com/google/go-containerregistry/pkg/name"
	v1 "github.com/google/go-containerregistry/pkg/v1"
	"github.com/google/go-containerregistry/pkg/v1/empty"
	"github.com/google/go-containerregistry/pkg/v1/mutate"
	"github.com/google/go-containerregistry/pkg/v1/tarball"
	"github.com/google/go-containerregistry/pkg/v1/types"

	"github.com/guildnet/metaguildnet/internal/buildinfo"
)

// Defaults of the image: where the binary goes and who runs it.
const (
	binDir      = "usr/local/bin"
	nonrootUID  = 65532
	defaultRepo = "ghcr.io/guildnet/metaguildnet-"
)

// Stamp is what goes into the binary and the image's labels.
type Stamp struct {
	Version, Commit string
	Date            time.Time
}

// Options describe one image.
type Options struct {
	Name   string // "agent" or "controller": the command and the binary's name
	Repo   string // image repository, the tag is Stamp.Version
	Arch   string // GOARCH
	Stamp  Stamp
	Binary []byte // the static binary
}

func main() {
	var (
		st         Stamp
		date, out  string
		repoPrefix string
		arch       string
	)
	flag.StringVar(&st.Version, "version", "dev", "version stamped into the binaries and used as the image tag")
	flag.StringVar(&st.Commit, "commit", "", "commit stamped into the binaries")
	flag.StringVar(&date, "date", "", "build date, RFC 3339 (the commit's date, git log -1 --format=%cI; empty: SOURCE_DATE_EPOCH, else 1970); every timestamp in the image")
	flag.StringVar(&out, "out", "bin", "directory for the binaries and the image tarballs")
	flag.StringVar(&repoPrefix, "repo-prefix", defaultRepo, "image repository prefix; the command name is appended")
	flag.StringVar(&arch, "arch", runtime.GOARCH, "GOARCH of the binaries and images")
	flag.Usage = func() {
		fmt.Fprintf(flag.CommandLine.Output(), "usage: image [flags] agent|controller ...\n")
		flag.PrintDefaults()
	}
	flag.Parse()
	if err := run(context.Background(), st, date, out, repoPrefix, arch, flag.Args()); err != nil {
		fmt.Fprintln(os.Stderr, "image:", err)
		os.Exit(1)
	}
}

func run(ctx context.Context, st Stamp, date, out, repoPrefix, arch string, names []string) error {
	if len(names) == 0 {
		return errors.New("name at least one of: agent, controller")
	}
	t, err := parseDate(date)
	if err != nil {
		return err
	}
	st.Date = t
	if err := os.MkdirAll(out, 0o755); err != nil {
		return fmt.Errorf("output directory: %w", err)
	}
	for _, n := range names {
		if n != "agent" && n != "controller" {
			return fmt.Errorf("%q: want agent or controller", n)
		}
		start := time.Now()
		binPath := filepath.Join(out, n+"-linux-"+arch)
		if err := BuildBinary(ctx, n, arch, st, binPath); err != nil {
			return err
		}
		bin, err := os.ReadFile(binPath)
		if err != nil {
			return fmt.Errorf("read %s: %w", binPath, err)
		}
		img, ref, err := Image(Options{Name: n, Repo: repoPrefix + n, Arch: arch, Stamp: st, Binary: bin})
		if err != nil {
			return err
		}
		tarPath := filepath.Join(out, "metaguildnet-"+n+"-image.tar")
		if err := WriteOCIArchive(tarPath, ref, img); err != nil {
			return err
		}
		dg, err := img.Digest()
		if err != nil {
			return fmt.Errorf("%s digest: %w", n, err)
		}
		fi, err := os.Stat(tarPath)
		if err != nil {
			return fmt.Errorf("stat %s: %w", tarPath, err)
		}
		fmt.Printf("%s\t%s\t%s\t%.1f MiB\t%s\n", ref, dg, tarPath, float64(fi.Size())/(1<<20), time.Since(start).Round(time.Second))
	}
	return nil
}

// parseDate reads the build date; empty means SOURCE_DATE_EPOCH, else the
// Unix epoch (never the clock: that would break reproducibility).
func parseDate(s string) (time.Time, error) {
	if s == "" {
		if e := os.Getenv("SOURCE_DATE_EPOCH"); e != "" {
			var sec int64
			if _, err := fmt.Sscan(e, &sec); err != nil {
				return time.Time{}, fmt.Errorf("SOURCE_DATE_EPOCH %q: %w", e, err)
			}
			return time.Unix(sec, 0).UTC(), nil
		}
		return time.Unix(0, 0).UTC(), nil
	}
	t, err := time.Parse(time.RFC3339, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("-date %q: want RFC 3339: %w", s, err)
	}
	return t.UTC(), nil
}

// moduleRoot is the directory of the main module's go.mod.
func moduleRoot(ctx context.Context) (string, error) {
	out, err := exec.CommandContext(ctx, "go", "env", "GOMOD").Output()
	if err != nil {
		return "", fmt.Errorf("go env GOMOD: %w", err)
	}
	gomod := strings.TrimSpace(string(out))
	if gomod == "" || gomod == os.DevNull {
		return "", errors.New("not inside the metaguildnet module")
	}
	return filepath.Dir(gomod), nil
}

// BuildBinary builds ./cmd/NAME as a static, stripped linux binary with
// the stamp, the same way every time: no cgo, no file paths, no VCS
// stamp from the working tree (the commit is stamped explicitly).
func BuildBinary(ctx context.Context, name, arch string, st Stamp, out string) error {
	root, err := moduleRoot(ctx)
	if err != nil {
		return err
	}
	abs, err := filepath.Abs(out)
	if err != nil {
		return fmt.Errorf("binary path: %w", err)
	}
	ldflags := "-s -w " + buildinfo.LDFlags(st.Version, st.Commit, st.Date.Format(time.RFC3339))
	cmd := exec.CommandContext(ctx, "go", "build", "-trimpath", "-buildvcs=false",
		"-ldflags", ldflags, "-o", abs, "./cmd/"+name)
	cmd.Dir = root
	cmd.Env = append(os.Environ(), "CGO_ENABLED=0", "GOOS=linux", "GOARCH="+arch, "GOFLAGS=")
	if b, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("go build ./cmd/%s: %w\n%s", name, err, b)
	}
	return nil
}

// Image assembles the image: one layer holding /usr/local/bin/NAME and a
// minimal /etc/passwd, the binary as entrypoint, user 65532, OCI media
// types, the stamp as labels. Nothing in it depends on the clock or the
// machine, so the same inputs give the same digest.
func Image(o Options) (v1.Image, name.Tag, error) {
	ref, err := name.NewTag(o.Repo + ":" + tagOf(o.Stamp.Version))
	if err != nil {
		return nil, name.Tag{}, fmt.Errorf("image name: %w", err)
	}
	layerTar, err := rootfs(o)
	if err != nil {
		return nil, name.Tag{}, fmt.Errorf("%s layer: %w", o.Name, err)
	}
	layer, err := tarball.LayerFromOpener(func() (io.ReadCloser, error) {
		return io.NopCloser(bytes.NewReader(layerTar)), nil
	}, tarball.WithMediaType(types.OCILayer), tarball.WithCompressedCaching)
	if err != nil {
		return nil, name.Tag{}, fmt.Errorf("%s layer: %w", o.Name, err)
	}
	created := v1.Time{Time: o.Stamp.Date}
	img := mutate.MediaType(empty.Image, types.OCIManifestSchema1)
	img = mutate.ConfigMediaType(img, types.OCIConfigJSON)
	img, err = mutate.Append(img, mutate.Addendum{Layer: layer, MediaType: types.OCILayer, History: v1.History{
		Created: created, CreatedBy: "hack/image " + o.Name + " " + o.Stamp.Version,
	}})
	if err != nil {
		return nil, name.Tag{}, fmt.Errorf("%s: append layer: %w", o.Name, err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return nil, name.Tag{}, fmt.Errorf("%s config: %w", o.Name, err)
	}
	cf = cf.DeepCopy()
	cf.Architecture, cf.OS, cf.Created = o.Arch, "linux", created
	cf.Config = v1.Config{
		Entrypoint: []string{"/" + binDir + "/" + o.Name},
		User:       fmt.Sprintf("%d:%d", nonrootUID, nonrootUID),
		Env:        []string{"PATH=/" + binDir},
		WorkingDir: "/",
		Labels: map[string]string{
			"org.opencontainers.image.title":    "metaguildnet-" + o.Name,
			"org.opencontainers.image.version":  o.Stamp.Version,
			"org.opencontainers.image.revision": o.Stamp.Commit,
			"org.opencontainers.image.created":  o.Stamp.Date.Format(time.RFC3339),
			"org.opencontainers.image.source":   "https://github.com/guildnet/metaguildnet",
		},
	}
	if img, err = mutate.ConfigFile(img, cf); err != nil {
		return nil, name.Tag{}, fmt.Errorf("%s config: %w", o.Name, err)
	}
	return img, ref, nil
}

// tagOf makes a version usable as a tag ("+" is not allowed in tags).
func tagOf(v string) string {
	v = strings.ReplaceAll(v, "+", "-")
	if v == "" {
		return "dev"
	}
	return v
}

// rootfs is the layer's tar: fixed owners, modes and times, sorted.
func rootfs(o Options) ([]byte, error) {
	passwd := fmt.Sprintf("root:x:0:0:root:/:/sbin/nologin\nnonroot:x:%d:%d:nonroot:/:/sbin/nologin\n", nonrootUID, nonrootUID)
	group := fmt.Sprintf("root:x:0:\nnonroot:x:%d:\n", nonrootUID)
	entries := []struct {
		path string
		mode int64
		data []byte
		dir  bool
	}{
		{path: "etc/", mode: 0o755, dir: true},
		{path: "etc/group", mode: 0o644, data: []byte(group)},
		{path: "etc/passwd", mode: 0o644, data: []byte(passwd)},
		{path: "usr/", mode: 0o755, dir: true},
		{path: "usr/local/", mode: 0o755, dir: true},
		{path: binDir + "/", mode: 0o755, dir: true},
		{path: binDir + "/" + o.Name, mode: 0o755, data: o.Binary},
	}
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, e := range entries {
		h := &tar.Header{Name: e.path, Mode: e.mode, ModTime: o.Stamp.Date, Typeflag: tar.TypeReg,
			Size: int64(len(e.data)), Format: tar.FormatPAX}
		if e.dir {
			h.Typeflag = tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return nil, fmt.Errorf("%s: %w", e.path, err)
		}
		if _, err := tw.Write(e.data); err != nil {
			return nil, fmt.Errorf("%s: %w", e.path, err)
		}
	}
	if err := tw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// WriteOCIArchive writes img as a tar of an OCI image layout: oci-layout,
// index.json naming ref (for containerd and for skopeo), and the blobs,
// with fixed times and owners.
func WriteOCIArchive(path string, ref name.Tag, img v1.Image) (err error) {
	manifest, err := img.RawManifest()
	if err != nil {
		return fmt.Errorf("manifest: %w", err)
	}
	config, err := img.RawConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	mt, err := img.MediaType()
	if err != nil {
		return fmt.Errorf("media type: %w", err)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		return fmt.Errorf("config: %w", err)
	}
	index, err := json.Marshal(v1.IndexManifest{
		SchemaVersion: 2,
		MediaType:     types.OCIImageIndex,
		Manifests: []v1.Descriptor{{
			MediaType: mt, Size: int64(len(manifest)), Digest: sha(manifest),
			Platform: &v1.Platform{OS: cf.OS, Architecture: cf.Architecture},
			Annotations: map[string]string{
				"io.containerd.image.name":          ref.String(),
				"org.opencontainers.image.ref.name": ref.TagStr(),
			},
		}},
	})
	if err != nil {
		return fmt.Errorf("index: %w", err)
	}
	layers, err := img.Layers()
	if err != nil {
		return fmt.Errorf("layers: %w", err)
	}

	f, err := os.Create(path)
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if cerr := f.Close(); err == nil && cerr != nil {
			err = fmt.Errorf("write %s: %w", path, cerr)
		}
	}()
	tw := tar.NewWriter(f)
	mtime := cf.Created.Time
	add := func(name string, size int64, r io.Reader) error {
		h := &tar.Header{Name: name, Mode: 0o644, Size: size, ModTime: mtime, Typeflag: tar.TypeReg, Format: tar.FormatPAX}
		if r == nil {
			h.Mode, h.Typeflag = 0o755, tar.TypeDir
		}
		if err := tw.WriteHeader(h); err != nil {
			return fmt.Errorf("write %s: %s: %w", path, name, err)
		}
		if r != nil {
			if _, err := io.Copy(tw, r); err != nil {
				return fmt.Errorf("write %s: %s: %w", path, name, err)
			}
		}
		return nil
	}
	blob := func(h v1.Hash) string { return "blobs/" + h.Algorithm + "/" + h.Hex }
	steps := []func() error{
		func() error { return add("oci-layout", int64(len(ociLayout)), strings.NewReader(ociLayout)) },
		func() error { return add("index.json", int64(len(index)), bytes.NewReader(index)) },
		func() error { return add("blobs/", 0, nil) },
		func() error { return add("blobs/sha256/", 0, nil) },
		func() error { return add(blob(sha(manifest)), int64(len(manifest)), bytes.NewReader(manifest)) },
		func() error { return add(blob(sha(config)), int64(len(config)), bytes.NewReader(config)) },
	}
	for _, l := range layers {
		steps = append(steps, func() error {
			d, err := l.Digest()
			if err != nil {
				return fmt.Errorf("layer digest: %w", err)
			}
			size, err := l.Size()
			if err != nil {
				return fmt.Errorf("layer size: %w", err)
			}
			rc, err := l.Compressed()
			if err != nil {
				return fmt.Errorf("layer: %w", err)
			}
			defer rc.Close()
			return add(blob(d), size, rc)
		})
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return err
		}
	}
	if err := tw.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	return nil
}

const ociLayout = `{"imageLayoutVersion":"1.0.0"}`

func sha(b []byte) v1.Hash {
	h, _, _ := v1.SHA256(bytes.NewReader(b)) // reading memory cannot fail
	return h
}
