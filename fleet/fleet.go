// Package fleet reads the fleet spec: one YAML file (apiVersion
// metaguildnet/v1, kind Fleet) that names the clusters, their nodes and
// roles, and each layer's settings (types in messages/fleet.go, whose JSON
// names the YAML uses). Every refusal names the file, the line and the
// field; unknown fields are refused; secrets are only references
// (env:NAME, file:PATH); GuildNet's defaults are filled in.
//
//	f, err := fleet.Load("fleet.yaml") // fleet.yaml:12: clusters[0].nodes[1].role: ...
//	rev := fleet.Hash(f)               // sha256 of the canonical JSON
package fleet

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"

	"github.com/guildnet/metaguildnet/messages"
)

// MaxFileBytes bounds a fleet spec file.
const MaxFileBytes = 1 << 20

// maxDepth bounds the nesting of the YAML (the spec needs 6).
const maxDepth = 16

// Error is a refusal with where it was found.
type Error struct {
	File  string
	Line  int    // 0 when unknown (a spec sent as JSON)
	Field string // the field path, clusters[0].nodes[1].role
	Msg   string
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		fmt.Fprintf(&b, ":%d", e.Line)
	}
	if e.Field != "" {
		if b.Len() > 0 {
			b.WriteString(": ")
		}
		b.WriteString(e.Field)
	}
	if b.Len() > 0 {
		b.WriteString(": ")
	}
	b.WriteString(e.Msg)
	return b.String()
}

// Load reads and parses the spec at path.
func Load(path string) (*messages.Fleet, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, fmt.Errorf("fleet spec: %w", err)
	}
	defer f.Close()
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(io.LimitReader(f, MaxFileBytes+1)); err != nil {
		return nil, fmt.Errorf("fleet spec %s: %w", path, err)
	}
	return Parse(path, buf.Bytes())
}

// Parse parses a spec; name is the file name errors carry.
func Parse(name string, data []byte) (*messages.Fleet, error) {
	if len(data) > MaxFileBytes {
		return nil, &Error{File: name, Msg: fmt.Sprintf("file of %d bytes exceeds the limit of %d bytes", len(data), MaxFileBytes)}
	}
	var doc yaml.Node
	dec := yaml.NewDecoder(bytes.NewReader(data))
	if err := dec.Decode(&doc); err != nil {
		return nil, &Error{File: name, Line: yamlErrLine(err), Msg: "not valid YAML: " + strings.TrimPrefix(err.Error(), "yaml: ")}
	}
	var extra yaml.Node
	if err := dec.Decode(&extra); err == nil {
		return nil, &Error{File: name, Line: extra.Line, Msg: "more than one YAML document: a fleet spec is one"}
	}
	if doc.Kind != yaml.DocumentNode || len(doc.Content) != 1 {
		return nil, &Error{File: name, Line: 1, Msg: "empty file: want a Fleet (apiVersion: metaguildnet/v1, kind: Fleet)"}
	}
	d := &decoder{file: name, lines: map[string]int{}}
	var f messages.Fleet
	if err := d.decode(doc.Content[0], reflect.ValueOf(&f).Elem(), "", 0); err != nil {
		return nil, err
	}
	if err := validate(&f, d.at); err != nil {
		return nil, err
	}
	Defaults(&f)
	return &f, nil
}

// Validate checks a spec that arrived as JSON (the controller's side of
// `setup plan|apply`): the same rules as Parse, without lines.
func Validate(f *messages.Fleet) error {
	if f == nil {
		return &Error{Msg: "no fleet spec"}
	}
	return validate(f, func(field string) (string, int) { return "", 0 })
}

// Hash is the sha256 (hex) of the spec's canonical JSON: the revision of a
// spec. Two files that mean the same spec (key order, comments, defaults
// written out or not) hash the same.
func Hash(f *messages.Fleet) string {
	b, _ := json.Marshal(f) // deep copy through JSON
	var cp messages.Fleet
	json.Unmarshal(b, &cp)
	Defaults(&cp)
	b, _ = json.Marshal(&cp) // struct order, sorted map keys: canonical
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:])
}

// Cluster returns the named cluster of f.
func Cluster(f *messages.Fleet, name string) (messages.FleetCluster, bool) {
	for _, c := range f.Clusters {
		if c.Name == name {
			return c, true
		}
	}
	return messages.FleetCluster{}, false
}

type decoder struct {
	file  string
	lines map[string]int // field path -> line
}

// at returns the file and the line of field, or of its nearest parent.
func (d *decoder) at(field string) (string, int) {
	for p := field; ; {
		if l, ok := d.lines[p]; ok {
			return d.file, l
		}
		i := strings.LastIndexAny(p, ".[")
		if i < 0 {
			return d.file, d.lines[""]
		}
		p = p[:i]
	}
}

func (d *decoder) errf(n *yaml.Node, field, format string, a ...any) error {
	return &Error{File: d.file, Line: n.Line, Field: field, Msg: fmt.Sprintf(format, a...)}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

var secretRefType = reflect.TypeFor[messages.SecretRef]()

// decode sets v from n by v's JSON field names, recording each field's line.
func (d *decoder) decode(n *yaml.Node, v reflect.Value, path string, depth int) error {
	if depth > maxDepth {
		return d.errf(n, path, "nested deeper than %d levels", maxDepth)
	}
	if n.Kind == yaml.AliasNode {
		return d.errf(n, path, "YAML aliases are not allowed in a fleet spec")
	}
	if n.Anchor != "" {
		return d.errf(n, path, "YAML anchors are not allowed in a fleet spec")
	}
	d.lines[path] = n.Line
	if n.Kind == yaml.ScalarNode && n.Tag == "!!null" {
		return nil // left at its zero value: the default
	}
	switch v.Kind() {
	case reflect.Pointer:
		p := reflect.New(v.Type().Elem())
		if err := d.decode(n, p.Elem(), path, depth+1); err != nil {
			return err
		}
		v.Set(p)
		return nil
	case reflect.Struct:
		if n.Kind != yaml.MappingNode {
			return d.errf(n, path, "want a mapping (key: value lines), got %s", kindName(n))
		}
		fields := jsonFields(v.Type())
		seen := map[string]bool{}
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode {
				return d.errf(k, path, "a key must be a plain word")
			}
			idx, ok := fields[k.Value]
			if !ok {
				return d.errf(k, join(path, k.Value), "unknown field (known: %s)", strings.Join(fieldNames(v.Type()), ", "))
			}
			if seen[k.Value] {
				return d.errf(k, join(path, k.Value), "given twice")
			}
			seen[k.Value] = true
			if err := d.decode(val, v.Field(idx), join(path, k.Value), depth+1); err != nil {
				return err
			}
			d.lines[join(path, k.Value)] = k.Line
		}
		return nil
	case reflect.Slice:
		if n.Kind != yaml.SequenceNode {
			return d.errf(n, path, "want a list, got %s", kindName(n))
		}
		s := reflect.MakeSlice(v.Type(), len(n.Content), len(n.Content))
		for i, e := range n.Content {
			if err := d.decode(e, s.Index(i), fmt.Sprintf("%s[%d]", path, i), depth+1); err != nil {
				return err
			}
		}
		v.Set(s)
		return nil
	case reflect.Map:
		if n.Kind != yaml.MappingNode {
			return d.errf(n, path, "want a mapping, got %s", kindName(n))
		}
		m := reflect.MakeMapWithSize(v.Type(), len(n.Content)/2)
		for i := 0; i+1 < len(n.Content); i += 2 {
			k, val := n.Content[i], n.Content[i+1]
			if k.Kind != yaml.ScalarNode || val.Kind != yaml.ScalarNode {
				return d.errf(k, path, "want key: value with plain values")
			}
			if m.MapIndex(reflect.ValueOf(k.Value)).IsValid() {
				return d.errf(k, path+"."+k.Value, "given twice")
			}
			m.SetMapIndex(reflect.ValueOf(k.Value), reflect.ValueOf(val.Value))
		}
		v.Set(m)
		return nil
	case reflect.String:
		if n.Kind != yaml.ScalarNode {
			return d.errf(n, path, "want a string, got %s", kindName(n))
		}
		if v.Type() != secretRefType && n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float" && n.Tag != "!!bool" {
			return d.errf(n, path, "want a string, got %s", n.Tag)
		}
		v.SetString(n.Value)
		return nil
	case reflect.Bool:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!bool" {
			return d.errf(n, path, "want true or false, got %q", n.Value)
		}
		b, _ := strconv.ParseBool(strings.ToLower(n.Value))
		v.SetBool(b)
		return nil
	case reflect.Int, reflect.Int32, reflect.Int64:
		if n.Kind != yaml.ScalarNode || n.Tag != "!!int" {
			return d.errf(n, path, "want a whole number, got %q", n.Value)
		}
		i, err := strconv.ParseInt(n.Value, 0, v.Type().Bits())
		if err != nil {
			return d.errf(n, path, "want a whole number that fits %d bits, got %q", v.Type().Bits(), n.Value)
		}
		v.SetInt(i)
		return nil
	}
	return d.errf(n, path, "cannot decode into %s", v.Type())
}

func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		return fmt.Sprintf("%q", n.Value)
	}
	return "something else"
}

// jsonFields maps a struct's JSON names to field indexes.
func jsonFields(t reflect.Type) map[string]int {
	m := map[string]int{}
	for i := range t.NumField() {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" {
			continue
		}
		if name == "" {
			name = f.Name
		}
		m[name] = i
	}
	return m
}

func fieldNames(t reflect.Type) []string {
	var out []string
	for i := range t.NumField() {
		if name, _, _ := strings.Cut(t.Field(i).Tag.Get("json"), ","); name != "" && name != "-" {
			out = append(out, name)
		}
	}
	return out
}

// yamlErrLine pulls "line N" out of a yaml.v3 syntax error.
func yamlErrLine(err error) int {
	s := err.Error()
	if i := strings.Index(s, "line "); i >= 0 {
		j := i + 5
		for j < len(s) && s[j] >= '0' && s[j] <= '9' {
			j++
		}
		if n, err := strconv.Atoi(s[i+5 : j]); err == nil {
			return n
		}
	}
	return 0
}
