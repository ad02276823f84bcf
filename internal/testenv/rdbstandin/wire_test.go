package rdbstandin

import (
	"bufio"
	"crypto/pbkdf2"
	"crypto/sha256"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"testing"
	"time"

	r "gopkg.in/rethinkdb/rethinkdb-go.v6"
)

// rawConn is a hand-written protocol client, to send what no real driver
// would.
type rawConn struct {
	t  *testing.T
	c  net.Conn
	br *bufio.Reader
}

func dialRaw(t *testing.T, addr string) *rawConn {
	t.Helper()
	c, err := net.DialTimeout("tcp", addr, 5*time.Second)
	if err != nil {
		t.Fatalf("dial %s: %v", addr, err)
	}
	_ = c.SetDeadline(time.Now().Add(10 * time.Second))
	t.Cleanup(func() { _ = c.Close() })
	return &rawConn{t: t, c: c, br: bufio.NewReader(c)}
}

func (rc *rawConn) write(b []byte) {
	rc.t.Helper()
	if _, err := rc.c.Write(b); err != nil {
		rc.t.Fatalf("write: %v", err)
	}
}

func (rc *rawConn) readMsg() (map[string]any, error) {
	b, err := rc.br.ReadBytes(0)
	if err != nil {
		return nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(b[:len(b)-1], &m); err != nil {
		return nil, fmt.Errorf("handshake reply %q: %w", b, err)
	}
	return m, nil
}

func magicBytes() []byte { return binary.LittleEndian.AppendUint32(nil, magicV1_0) }

// login performs the V1_0 SCRAM-SHA-256 handshake as the driver does.
func (rc *rawConn) login(user, password string) {
	t := rc.t
	t.Helper()
	cnonce := "rAwClIeNtNoNcE"
	bare := "n=" + user + ",r=" + cnonce
	rc.write(append(magicBytes(), []byte(`{"protocol_version":0,"authentication":"n,,`+bare+`","authentication_method":"SCRAM-SHA-256"}`+"\x00")...))
	if m, err := rc.readMsg(); err != nil || m["success"] != true {
		t.Fatalf("version message: %v %v", m, err)
	}
	m, err := rc.readMsg()
	if err != nil || m["success"] != true {
		t.Fatalf("server-first: %v %v", m, err)
	}
	serverFirst := m["authentication"].(string)
	attrs, err := splitAttributes(serverFirst)
	if err != nil {
		t.Fatalf("server-first %q: %v", serverFirst, err)
	}
	salt, _ := base64.StdEncoding.DecodeString(attrs['s'])
	iters, _ := strconv.Atoi(attrs['i'])
	salted, err := pbkdf2.Key(sha256.New, password, salt, iters, sha256.Size)
	if err != nil {
		t.Fatal(err)
	}
	withoutProof := "c=biws,r=" + attrs['r']
	authMsg := bare + "," + serverFirst + "," + withoutProof
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	sig := hmacSHA256(stored[:], authMsg)
	proof := make([]byte, len(clientKey))
	for i := range proof {
		proof[i] = clientKey[i] ^ sig[i]
	}
	rc.write([]byte(`{"authentication":"` + withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof) + `"}` + "\x00"))
	m, err = rc.readMsg()
	if err != nil || m["success"] != true {
		t.Fatalf("server-final: %v %v", m, err)
	}
	wantV := "v=" + base64.StdEncoding.EncodeToString(hmacSHA256(hmacSHA256(salted, "Server Key"), authMsg))
	if m["authentication"] != wantV {
		t.Fatalf("server signature %v, want %s", m["authentication"], wantV)
	}
}

func (rc *rawConn) sendFrame(token uint64, body string) {
	rc.write(appendFrame(nil, token, []byte(body)))
}

func (rc *rawConn) readFrame() (uint64, map[string]any, error) {
	tok, body, err := readFrame(rc.br, MaxQueryBytes)
	if err != nil {
		return 0, nil, err
	}
	var m map[string]any
	if err := json.Unmarshal(body, &m); err != nil {
		return tok, nil, fmt.Errorf("response %q: %w", body, err)
	}
	return tok, m, nil
}

// expectClosed reads until the server closes the connection.
func (rc *rawConn) expectClosed() {
	rc.t.Helper()
	if _, err := io.Copy(io.Discard, rc.br); err != nil && !errors.Is(err, net.ErrClosed) && !strings.Contains(err.Error(), "reset") {
		rc.t.Fatalf("waiting for the server to close: %v", err)
	}
}

func TestMalformedHandshakes(t *testing.T) {
	s := startServer(t, Options{Password: "pw"})
	tests := []struct {
		name     string
		send     []byte
		wantLine string // prefix of the server's NUL-terminated reply ("" = only closes)
		wantCode float64
	}{
		{"old protocol version", binary.LittleEndian.AppendUint32(nil, 0x400c2d20), "ERROR: Received an unsupported protocol version", 0},
		{"http request", []byte("GET / HTTP/1.1\r\n\r\n"), "ERROR: Received an unsupported protocol version", 0},
		{"not json", append(magicBytes(), "hello\x00"...), `{"success":false`, 10},
		{"wrong method", append(magicBytes(), `{"protocol_version":0,"authentication":"n,,n=a,r=x","authentication_method":"PLAIN"}`+"\x00"...), `{"success":false`, 1},
		{"wrong protocol version", append(magicBytes(), `{"protocol_version":7,"authentication":"n,,n=a,r=x","authentication_method":"SCRAM-SHA-256"}`+"\x00"...), `{"success":false`, 1},
		{"channel binding", append(magicBytes(), `{"protocol_version":0,"authentication":"p=tls,,n=a,r=x","authentication_method":"SCRAM-SHA-256"}`+"\x00"...), `{"success":false`, 15},
		{"extension", append(magicBytes(), `{"protocol_version":0,"authentication":"n,,m=1,n=a,r=x","authentication_method":"SCRAM-SHA-256"}`+"\x00"...), `{"success":false`, 11},
		{"bad username escape", append(magicBytes(), `{"protocol_version":0,"authentication":"n,,n=a=ZZ,r=x","authentication_method":"SCRAM-SHA-256"}`+"\x00"...), `{"success":false`, 18},
		{"oversized first message", append(magicBytes(), strings.Repeat("x", MaxHandshakeMessage+10)...), "", 0},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := dialRaw(t, s.Addr())
			rc.write(tt.send)
			if strings.HasPrefix(tt.wantLine, "{") {
				if _, err := rc.readMsg(); err != nil { // the version message
					t.Fatalf("version message: %v", err)
				}
			}
			if tt.wantLine != "" {
				line, err := rc.br.ReadString(0)
				if err != nil {
					t.Fatalf("reading reply: %v", err)
				}
				if !strings.HasPrefix(line, tt.wantLine) {
					t.Fatalf("reply %q, want prefix %q", line, tt.wantLine)
				}
				if tt.wantCode != 0 {
					var m map[string]any
					if err := json.Unmarshal([]byte(strings.TrimSuffix(line, "\x00")), &m); err != nil || m["error_code"] != tt.wantCode {
						t.Fatalf("reply %q: error_code want %v (%v)", line, tt.wantCode, err)
					}
				}
			}
			rc.expectClosed()
		})
	}
	// The server still serves a well-behaved client.
	sess := connect(t, r.ConnectOpts{Address: s.Addr(), Password: "pw"})
	if _, err := r.DBList().Run(sess, runCtx(t)); err != nil {
		t.Fatalf("real driver after malformed clients: %v", err)
	}
}

func TestMalformedQueries(t *testing.T) {
	s := startServer(t, Options{Password: "pw", Databases: guildnetDBs})

	tests := []struct {
		name      string
		body      string
		wantType  float64 // response "t"; 0 = the connection is closed
		wantInMsg string
	}{
		{"not json", "{{{", 16, "failed to deserialize query"},
		{"empty array", "[]", 16, "failed to deserialize query"},
		{"type not a number", `["x"]`, 16, "failed to deserialize query"},
		{"unknown query type", "[99]", 16, "Unrecognized QueryType"},
		{"start without term", "[1]", 16, "START query without a term"},
		{"continue", "[2]", 16, "not in stream cache"},
		{"stop unknown token", "[3]", 2, ""},
		{"noreply wait", "[4]", 4, ""},
		{"server info", "[5]", 5, ""},
		{"term not an array of args", `[1,[59,"x"]]`, 18, "arguments to be an array"},
		{"unknown term type", `[1,[123456,[]]]`, 18, "UNKNOWN (123456) is not supported"},
		{"wrong arity", `[1,[59,[1]]]`, 18, "Expected 0 arguments"},
		{"bad global db", `[1,[59],{"db":"x"}]`, 18, "Expected type DATABASE"},
		{"deep nesting", "[1," + strings.Repeat("[2,[", 100) + "1" + strings.Repeat("]]", 100) + "]", 18, "nested deeper"},
		{"limit of a string", `[1,[71,["abc",1]]]`, 18, "Cannot convert STRING to SEQUENCE"},
		{"negative limit", `[1,[71,[[2,[1,2]],-1]]]`, 18, "non-negative"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rc := dialRaw(t, s.Addr())
			rc.login("admin", "pw")
			const token = 42
			rc.sendFrame(token, tt.body)
			tok, m, err := rc.readFrame()
			if err != nil {
				t.Fatalf("reading response: %v", err)
			}
			if tok != token {
				t.Errorf("response token %d, want %d", tok, token)
			}
			if m["t"] != tt.wantType {
				t.Fatalf("response %v, want t=%v", m, tt.wantType)
			}
			if tt.wantInMsg != "" {
				if got := fmt.Sprint(m["r"]); !strings.Contains(got, tt.wantInMsg) {
					t.Fatalf("response r=%s does not contain %q", got, tt.wantInMsg)
				}
			}
			// The same connection still answers a good query.
			rc.sendFrame(token+1, "[1,[59]]")
			if _, m, err := rc.readFrame(); err != nil || m["t"] != float64(1) {
				t.Fatalf("good query after a bad one: %v %v", m, err)
			}
		})
	}

	t.Run("oversized frame closes the connection", func(t *testing.T) {
		rc := dialRaw(t, s.Addr())
		rc.login("admin", "pw")
		hdr := binary.LittleEndian.AppendUint64(nil, 1)
		hdr = binary.LittleEndian.AppendUint32(hdr, MaxQueryBytes+1)
		rc.write(hdr)
		rc.expectClosed()
	})
	t.Run("truncated frame then hang up", func(t *testing.T) {
		rc := dialRaw(t, s.Addr())
		rc.login("admin", "pw")
		rc.write(appendFrame(nil, 1, []byte("[1,[59]]"))[:15])
		_ = rc.c.Close()
	})
	t.Run("noreply gets no answer", func(t *testing.T) {
		rc := dialRaw(t, s.Addr())
		rc.login("admin", "pw")
		rc.sendFrame(7, `[1,[59],{"noreply":true}]`)
		rc.sendFrame(8, `[4]`)
		tok, m, err := rc.readFrame()
		if err != nil || tok != 8 || m["t"] != float64(4) {
			t.Fatalf("first answer after a noreply query: token %d %v %v, want the NOREPLY_WAIT answer", tok, m, err)
		}
	})
	t.Run("stop cancels a slow query", func(t *testing.T) {
		s.SetLatency(time.Hour)
		defer s.SetLatency(0)
		rc := dialRaw(t, s.Addr())
		rc.login("admin", "pw")
		rc.sendFrame(9, `[1,[59]]`)
		rc.sendFrame(9, `[3]`)
		tok, m, err := rc.readFrame()
		if err != nil || tok != 9 || m["t"] != float64(2) {
			t.Fatalf("answer to STOP: token %d %v %v", tok, m, err)
		}
	})
}
