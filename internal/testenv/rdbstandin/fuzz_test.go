package rdbstandin

import (
	"bufio"
	"bytes"
	"encoding/binary"
	"io"
	"testing"
)

// The decoders must never panic, whatever the bytes.

func FuzzParseClientFirst(f *testing.F) {
	for _, s := range []string{
		`{"protocol_version": 0,"authentication": "n,,n=admin,r=abc","authentication_method": "SCRAM-SHA-256"}`,
		`{"protocol_version":0,"authentication":"n,,n=a=2Cb=3D,r=x","authentication_method":"SCRAM-SHA-256"}`,
		`{"protocol_version":0,"authentication":"n,,n=a=","authentication_method":"SCRAM-SHA-256"}`,
		`{"protocol_version":0,"authentication":"y,,n=a,r=x,","authentication_method":"SCRAM-SHA-256"}`,
		`{"protocol_version":"0"}`, `null`, `[]`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		cf, err := parseClientFirst(b)
		if err == nil && (cf.User == "" || cf.Nonce == "") {
			t.Fatalf("accepted %q with an empty user or nonce", b)
		}
	})
}

func FuzzParseClientFinal(f *testing.F) {
	for _, s := range []string{
		`{"authentication": "c=biws,r=abcdef,p=AAAA"}`,
		`{"authentication": "c=biws,r=abc,p=!!"}`,
		`{"authentication": "p=AAAA,c=biws,r=abc"}`,
		`{"authentication": "c=biws,,r=abc"}`,
		`{"authentication": 5}`, `{}`, ``,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		_, _ = parseClientFinal(b)
	})
}

// FuzzHandshake feeds arbitrary client bytes to the server side of the
// handshake.
func FuzzHandshake(f *testing.F) {
	cred, err := newCredentials("admin", "pw")
	if err != nil {
		f.Fatal(err)
	}
	magic := binary.LittleEndian.AppendUint32(nil, magicV1_0)
	first := `{"protocol_version":0,"authentication":"n,,n=admin,r=abc","authentication_method":"SCRAM-SHA-256"}` + "\x00"
	f.Add(append(append([]byte{}, magic...), first...))
	f.Add(append(append(append([]byte{}, magic...), first...), `{"authentication":"c=biws,r=abc,p=AAAA"}`+"\x00"...))
	f.Add([]byte("GET / HTTP/1.0\r\n\r\n"))
	f.Add(append(append([]byte{}, magic...), 0))
	f.Fuzz(func(t *testing.T, b []byte) {
		br := bufio.NewReaderSize(bytes.NewReader(b), 64)
		if err := handshake(br, io.Discard, cred, 256); err == nil {
			// Authentication needs the server's random nonce: random
			// input cannot have got through.
			t.Fatalf("handshake accepted %q", b)
		}
	})
}

// FuzzQuery decodes a query frame and evaluates it against a small catalog.
func FuzzQuery(f *testing.F) {
	cat, err := newCatalog(map[string][]string{"test": {"t"}, "org_a__b": {"_info"}})
	if err != nil {
		f.Fatal(err)
	}
	if err := cat.insert("test", "t", []map[string]any{{"id": 1}, {"id": 2}}); err != nil {
		f.Fatal(err)
	}
	for _, q := range []string{
		`[1,[59]]`,
		`[1,[62,[[14,["org_a__b"]]]]]`,
		`[1,[71,[[15,[[14,["test"]],"t"]],1]]]`,
		`[1,[43,[[15,["t"]]]],{"db":[14,["test"]]}]`,
		`[1,[2,[1,2,{"a":[2,[3]]}]]]`,
		`[1,[3,[],{"a":1}]]`,
		`[1,[71,[[2,[1,2,3]],1e300]]]`,
		`[1,[1,[[1,2]]]]`,
		`[1,[57,["org_x__y"]]]`, `[1,[57,["rethinkdb"]]]`, `[1,[57,["a b"]]]`,
		`[1,[58,["org_a__b"]]]`, `[1,[58,["test"]]]`,
		`[1,[60,[[14,["test"]],"n"]]]`, `[1,[60,[[14,["test"]],"k"],{"primary_key":"key"}]]`,
		`[1,[60,["n"]],{"db":[14,["test"]]}]`, `[1,[61,[[14,["test"]],"t"]]]`, `[1,[61,["t"]]]`,
		`[5]`, `[3]`, `[2]`, `[1]`, `[1,null]`, `[1,1,2]`, `[]`, `{}`, `[1,[103,[]]]`,
	} {
		f.Add(appendFrame(nil, 1, []byte(q)))
	}
	f.Add([]byte{1, 2, 3})
	f.Add(binary.LittleEndian.AppendUint32(binary.LittleEndian.AppendUint64(nil, 1), 0xffffffff))
	f.Fuzz(func(t *testing.T, b []byte) {
		_, payload, err := readFrame(bytes.NewReader(b), 1<<16)
		if err != nil {
			return
		}
		q, err := parseQuery(payload)
		if err != nil || !q.HasTerm {
			return
		}
		ev := &evaluator{cat: cat, defaultDB: DefaultDB}
		if db, ok := q.Opts["db"]; ok {
			if _, err := ev.evalDB(db, 1); err != nil {
				return
			}
		}
		resp := ev.run(q.Term)
		if resp.R == nil {
			t.Fatalf("response without r for %q", payload)
		}
	})
}
