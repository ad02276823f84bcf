package messages

import (
	"encoding/json"
	"go/ast"
	"go/parser"
	"go/token"
	"reflect"
	"slices"
	"strings"
	"testing"
	"time"
)

// The fast paths in fast.go write and read a fixed list of fields. These
// tests fill every field of every type that has a fast path by reflection
// (nested structs and slice elements too) and hold the fast encoding and
// decoding against encoding/json, so a field added to a struct but not to
// its fast path fails here, by name, instead of being dropped on the hot
// path.

// fastTypes are the types with a fast path; declines are the fields whose
// non-zero values a fast path hands to encoding/json on purpose (by path
// prefix), and always those every variant sets (a fast path may decline
// their zero value).
var fastTypes = []struct {
	v        any
	declines []string
	always   []string
}{
	{v: &Task{}},
	{v: &Result{}},
	{v: &NodeResult{}},
	{v: &TaskReport{}, always: []string{"Results[].Node"}},   // a null results list goes through encoding/json
	{v: &SyncReply{}, declines: []string{"Tasks[]", "Node"}}, // a reply with tasks, or with the node's claims, goes through encoding/json
}

// TestFastTypesListed keeps fastTypes complete: every type fast.go gives
// an appendJSON or decodeFast method must be in it.
func TestFastTypesListed(t *testing.T) {
	f, err := parser.ParseFile(token.NewFileSet(), "fast.go", nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	var listed []string
	for _, ft := range fastTypes {
		listed = append(listed, reflect.TypeOf(ft.v).Elem().Name())
	}
	for _, d := range f.Decls {
		fn, ok := d.(*ast.FuncDecl)
		if !ok || fn.Recv == nil || (fn.Name.Name != "appendJSON" && fn.Name.Name != "decodeFast") {
			continue
		}
		star, ok := fn.Recv.List[0].Type.(*ast.StarExpr)
		if !ok {
			continue
		}
		if id, ok := star.X.(*ast.Ident); ok && !slices.Contains(listed, id.Name) {
			t.Errorf("%s has a fast path (%s) but is not in fastTypes", id.Name, fn.Name.Name)
		}
	}
}

var fillTime = time.Date(2026, 11, 29, 21, 4, 5, 123456789, time.UTC)

// leafPaths lists the fields of t down to its leaves: "Results[].Output".
func leafPaths(t reflect.Type, path string) []string {
	switch {
	case t == reflect.TypeFor[time.Time]() || t == reflect.TypeFor[json.RawMessage]():
		return []string{path}
	}
	switch t.Kind() {
	case reflect.Struct:
		var out []string
		for i := range t.NumField() {
			if f := t.Field(i); f.IsExported() && f.Tag.Get("json") != "-" {
				out = append(out, leafPaths(f.Type, join(path, f.Name))...)
			}
		}
		return out
	case reflect.Slice:
		return leafPaths(t.Elem(), path+"[]")
	case reflect.Pointer:
		return leafPaths(t.Elem(), path)
	}
	return []string{path}
}

func join(path, name string) string {
	if path == "" {
		return name
	}
	return path + "." + name
}

// fill sets in v (zero, settable) the leaves at targets, or every leaf
// when targets holds "*", to a non-zero value; slices get one element and
// pointers a value on the way to them.
func fill(v reflect.Value, path string, targets []string) {
	on := slices.ContainsFunc(targets, func(t string) bool { return t == "*" || t == path })
	below := slices.ContainsFunc(targets, func(t string) bool { return t == "*" || strings.HasPrefix(t, path) })
	t := v.Type()
	switch {
	case t == reflect.TypeFor[time.Time]():
		if on {
			v.Set(reflect.ValueOf(fillTime))
		}
		return
	case t == reflect.TypeFor[json.RawMessage]():
		if on {
			v.Set(reflect.ValueOf(json.RawMessage(`{"k":["v",1,true,null]}`)))
		}
		return
	}
	switch t.Kind() {
	case reflect.Struct:
		for i := range t.NumField() {
			if f := t.Field(i); f.IsExported() {
				fill(v.Field(i), join(path, f.Name), targets)
			}
		}
	case reflect.Slice:
		if slices.ContainsFunc(targets, func(t string) bool { return t == "*" || strings.HasPrefix(t, path+"[]") }) {
			s := reflect.MakeSlice(t, 1, 1)
			fill(s.Index(0), path+"[]", targets)
			v.Set(s)
		}
	case reflect.Pointer:
		if below {
			p := reflect.New(t.Elem())
			fill(p.Elem(), path, targets)
			v.Set(p)
		}
	case reflect.String:
		if on {
			v.SetString("value of " + path)
		}
	case reflect.Bool:
		if on {
			v.SetBool(true)
		}
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64:
		if on {
			v.SetInt(7)
		}
	case reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		if on {
			v.SetUint(7)
		}
	case reflect.Float32, reflect.Float64:
		if on {
			v.SetFloat(2.5)
		}
	case reflect.Map:
		if on {
			m := reflect.MakeMap(t)
			k, e := reflect.New(t.Key()).Elem(), reflect.New(t.Elem()).Elem()
			fill(k, path+"{}", []string{"*"})
			fill(e, path+"{}", []string{"*"})
			m.SetMapIndex(k, e)
			v.Set(m)
		}
	}
}

// filled returns a new value of typ's element type with targets filled.
func filled(typ reflect.Type, targets ...string) reflect.Value {
	p := reflect.New(typ.Elem())
	fill(p.Elem(), "", targets)
	return p
}

// decodeJSON decodes data with encoding/json into a new value of typ.
func decodeJSON(t *testing.T, typ reflect.Type, data []byte) any {
	t.Helper()
	p := reflect.New(typ.Elem())
	if err := json.Unmarshal(data, p.Interface()); err != nil {
		t.Fatalf("encoding/json refuses %s: %v", data, err)
	}
	return p.Elem().Interface()
}

func TestFastPathsKnowEveryField(t *testing.T) {
	for _, ft := range fastTypes {
		typ := reflect.TypeOf(ft.v)
		t.Run(typ.Elem().Name(), func(t *testing.T) {
			paths := leafPaths(typ.Elem(), "")
			declined := func(path string) bool {
				return slices.ContainsFunc(ft.declines, func(p string) bool { return strings.HasPrefix(path, p) })
			}
			_, isEnc := ft.v.(fastEncoder)
			_, isDec := ft.v.(fastDecoder)
			if !isEnc && !isDec {
				t.Fatal("neither a fast encoder nor a fast decoder")
			}
			baseJSON, err := json.Marshal(filled(typ, ft.always...).Interface())
			if err != nil {
				t.Fatal(err)
			}
			base := decodeJSON(t, typ, baseJSON)
			// Every field on its own, then all of them at once.
			for _, target := range append(paths, "*") {
				v := filled(typ, append([]string{target}, ft.always...)...)
				ref, err := json.Marshal(v.Interface())
				if err != nil {
					t.Fatalf("%s: encoding/json: %v", target, err)
				}
				want := decodeJSON(t, typ, ref)
				if target != "*" && !slices.Contains(ft.always, target) && reflect.DeepEqual(want, base) {
					t.Errorf("field %s: filling it left the value zero (test filler broken)", target)
				}
				if isEnc {
					b, ok := v.Interface().(fastEncoder).appendJSON(nil)
					switch {
					case !ok && target != "*" && !declined(target):
						t.Errorf("field %s: the fast encoder declines a value with it set; teach fast.go the field or list it in declines", target)
					case ok && !json.Valid(b):
						t.Errorf("field %s: the fast encoder wrote invalid JSON %s", target, b)
					case ok:
						if got := decodeJSON(t, typ, b); !reflect.DeepEqual(got, want) {
							t.Errorf("field %s: the fast encoder does not know it:\n fast         %s\n encoding/json %s", target, b, ref)
						}
					}
				}
				if isDec {
					d := reflect.New(typ.Elem())
					ok := d.Interface().(fastDecoder).decodeFast(ref)
					switch {
					case !ok && target != "*" && !declined(target):
						t.Errorf("field %s: the fast decoder does not know it (declines %s); teach fast.go the field or list it in declines", target, ref)
					case ok && !reflect.DeepEqual(d.Elem().Interface(), want):
						t.Errorf("field %s: the fast decoder disagrees with encoding/json on %s:\n fast         %+v\n encoding/json %+v", target, ref, d.Elem().Interface(), want)
					}
				}
			}
		})
	}
}
