package main

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"testing"
	"time"

	"github.com/google/go-containerregistry/pkg/v1/layout"
	"github.com/google/go-containerregistry/pkg/v1/validate"

	"github.com/guildnet/metaguildnet/internal/buildinfo"
)

var testStamp = Stamp{Version: "v0.0.0-test", Commit: "0123456789abcdef0123456789abcdef01234567",
	Date: time.Date(2026, 11, 29, 20, 0, 0, 0, time.UTC)}

// writeImage assembles an image from bin and writes its tarball to dir.
func writeImage(t *testing.T, dir string, st Stamp, bin []byte) (digest string, tarBytes []byte) {
	t.Helper()
	img, ref, err := Image(Options{Name: "agent", Repo: defaultRepo + "agent", Arch: "amd64", Stamp: st, Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	d, err := img.Digest()
	if err != nil {
		t.Fatal(err)
	}
	p := filepath.Join(dir, "image.tar")
	if err := WriteOCIArchive(p, ref, img); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	readBack(t, b, d.String(), ref.String())
	return d.String(), b
}

type tarEntry struct {
	*tar.Header
	data []byte
}

// readTar reads every entry of a tar stream.
func readTar(t *testing.T, r io.Reader) []tarEntry {
	t.Helper()
	var out []tarEntry
	tr := tar.NewReader(r)
	for {
		h, err := tr.Next()
		if errors.Is(err, io.EOF) {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		b, err := io.ReadAll(tr)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, tarEntry{h, b})
	}
}

// readBack unpacks an OCI archive and reads it with go-containerregistry's
// layout reader: one image, named ref, with digest want, whose blobs verify.
func readBack(t *testing.T, archive []byte, want, ref string) {
	t.Helper()
	dir := t.TempDir()
	for _, e := range readTar(t, bytes.NewReader(archive)) {
		p := filepath.Join(dir, filepath.FromSlash(e.Name))
		if e.Typeflag == tar.TypeDir {
			if err := os.MkdirAll(p, 0o755); err != nil {
				t.Fatal(err)
			}
			continue
		}
		if err := os.WriteFile(p, e.data, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	idx, err := layout.ImageIndexFromPath(dir)
	if err != nil {
		t.Fatalf("not an OCI layout: %v", err)
	}
	im, err := idx.IndexManifest()
	if err != nil || len(im.Manifests) != 1 {
		t.Fatalf("index: %v, %d manifests", err, len(im.Manifests))
	}
	desc := im.Manifests[0]
	if desc.Digest.String() != want || desc.Annotations["io.containerd.image.name"] != ref {
		t.Fatalf("index names %s %v, want %s %s", desc.Digest, desc.Annotations, want, ref)
	}
	img, err := idx.Image(desc.Digest)
	if err != nil {
		t.Fatal(err)
	}
	if err := validate.Image(img); err != nil {
		t.Fatalf("the archived image does not verify: %v", err)
	}
}

func TestImageFromOneBinaryHasOneDigest(t *testing.T) {
	bin := bytes.Repeat([]byte("not really an ELF binary\n"), 40000)
	d1, tar1 := writeImage(t, t.TempDir(), testStamp, bin)
	d2, tar2 := writeImage(t, t.TempDir(), testStamp, bin)
	if d1 != d2 {
		t.Fatalf("same binary, two digests: %s and %s", d1, d2)
	}
	if !bytes.Equal(tar1, tar2) {
		t.Fatal("same binary, same digest, but the tarballs differ")
	}
	later := testStamp
	later.Date = later.Date.Add(time.Second)
	if d3, _ := writeImage(t, t.TempDir(), later, bin); d3 == d1 {
		t.Fatal("another build date gave the same digest: the date is not in the image")
	}
	if d4, _ := writeImage(t, t.TempDir(), testStamp, append(bin, 0)); d4 == d1 {
		t.Fatal("another binary gave the same digest")
	}
}

func TestImageContents(t *testing.T) {
	bin := []byte("#!binary")
	img, ref, err := Image(Options{Name: "controller", Repo: defaultRepo + "controller", Arch: "arm64", Stamp: testStamp, Binary: bin})
	if err != nil {
		t.Fatal(err)
	}
	if got := ref.String(); got != "ghcr.io/guildnet/metaguildnet-controller:v0.0.0-test" {
		t.Errorf("ref %s", got)
	}
	mt, _ := img.MediaType()
	if mt != "application/vnd.oci.image.manifest.v1+json" {
		t.Errorf("manifest media type %s", mt)
	}
	cf, err := img.ConfigFile()
	if err != nil {
		t.Fatal(err)
	}
	if cf.OS != "linux" || cf.Architecture != "arm64" || !cf.Created.Time.Equal(testStamp.Date) {
		t.Errorf("config os/arch/created %s/%s/%s", cf.OS, cf.Architecture, cf.Created.Time)
	}
	if strings.Join(cf.Config.Entrypoint, " ") != "/usr/local/bin/controller" || cf.Config.User != "65532:65532" {
		t.Errorf("entrypoint %v user %q", cf.Config.Entrypoint, cf.Config.User)
	}
	if cf.Config.Labels["org.opencontainers.image.revision"] != testStamp.Commit {
		t.Errorf("labels %v", cf.Config.Labels)
	}
	layers, err := img.Layers()
	if err != nil || len(layers) != 1 {
		t.Fatalf("%d layers (%v), want 1", len(layers), err)
	}
	rc, err := layers[0].Uncompressed()
	if err != nil {
		t.Fatal(err)
	}
	defer rc.Close()
	found := false
	for _, e := range readTar(t, rc) {
		if !e.ModTime.Equal(testStamp.Date) || e.Uid != 0 || e.Gid != 0 {
			t.Errorf("%s: mtime %s uid %d gid %d", e.Name, e.ModTime, e.Uid, e.Gid)
		}
		if e.Name == "usr/local/bin/controller" {
			found = bytes.Equal(e.data, bin) && e.Mode == 0o755
		}
	}
	if !found {
		t.Fatal("layer lacks /usr/local/bin/controller (0755) with the binary")
	}
}

func TestParseDate(t *testing.T) {
	got, err := parseDate("2026-11-27T10:12:55+01:00")
	if err != nil || !got.Equal(time.Date(2026, 11, 27, 9, 12, 55, 0, time.UTC)) {
		t.Fatalf("got %s, %v", got, err)
	}
	t.Setenv("SOURCE_DATE_EPOCH", "1700000000")
	if got, err := parseDate(""); err != nil || got.Unix() != 1700000000 {
		t.Fatalf("SOURCE_DATE_EPOCH: got %s, %v", got, err)
	}
	if _, err := parseDate("yesterday"); err == nil {
		t.Fatal("a bad date was accepted")
	}
}

// The real agent binary, built twice the way `make image` builds it, is
// byte-identical, says what was stamped, and gives one image digest. After
// a `make image` the packages come from the build cache and each build
// relinks (~10 s); on a cold cache the first build compiles everything
// with -trimpath (~10 min on 2 cores), so it runs with CI=true or
// MGN_TEST_BUILD=1 only. The two builds share the cache: that the compile
// itself is reproducible is Go's promise (checked by hand once, see
// deploy/README.md).
func TestAgentBuildIsReproducible(t *testing.T) {
	if testing.Short() || (os.Getenv("CI") != "true" && os.Getenv("MGN_TEST_BUILD") != "1") {
		t.Skip("builds the agent twice: set MGN_TEST_BUILD=1 (CI=true runs it)")
	}
	if runtime.GOOS != "linux" {
		t.Skip("runs the linux binary it builds")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Minute)
	defer cancel()
	var sums [2][32]byte
	var digests [2]string
	var bins [2]string
	for i := range 2 {
		dir := t.TempDir()
		bins[i] = filepath.Join(dir, "agent")
		start := time.Now()
		if err := BuildBinary(ctx, "agent", runtime.GOARCH, testStamp, bins[i]); err != nil {
			t.Fatal(err)
		}
		b, err := os.ReadFile(bins[i])
		if err != nil {
			t.Fatal(err)
		}
		sums[i] = sha256.Sum256(b)
		digests[i], _ = writeImage(t, dir, testStamp, b)
		t.Logf("build %d: %.1f MiB in %s, image %s", i+1, float64(len(b))/(1<<20), time.Since(start).Round(time.Millisecond), digests[i])
	}
	if sums[0] != sums[1] {
		t.Fatalf("two builds of the agent differ: %x and %x", sums[0], sums[1])
	}
	if digests[0] != digests[1] {
		t.Fatalf("two builds, two image digests: %s and %s", digests[0], digests[1])
	}
	out, err := exec.CommandContext(ctx, bins[0], "version", "--json").Output()
	if err != nil {
		t.Fatalf("agent version: %v", err)
	}
	var info buildinfo.Info
	if err := json.Unmarshal(out, &info); err != nil {
		t.Fatalf("agent version --json printed %q: %v", out, err)
	}
	if info.Version != testStamp.Version || info.Commit != testStamp.Commit || info.Date != "2026-11-29T20:00:00Z" || info.GoVersion != runtime.Version() {
		t.Fatalf("stamped binary says %+v", info)
	}
	// Static: no interpreter, so it runs on an empty base.
	if b, _ := os.ReadFile(bins[0]); bytes.Contains(b, []byte("/lib64/ld-linux")) {
		t.Fatal("the agent is dynamically linked")
	}
}
