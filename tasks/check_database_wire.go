package tasks

// A minimal RethinkDB client for rethinkdb_query: the V1_0 handshake
// (SCRAM-SHA-256) and one r.dbList() query on the JSON wire protocol,
// nothing else. It replaces the rethinkdb-go driver in the agent: that
// driver (logrus, opentracing, protobuf registrations) costs an idle agent
// about 2.3 MiB of resident memory, and the agent must idle under 20 MiB.
// It speaks to a real RethinkDB 2.4 exactly as the driver does, and is
// tested against internal/testenv/rdbstandin.

import (
	"bufio"
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/pbkdf2"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"encoding/base64"
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"strconv"
	"strings"
	"time"
)

// RethinkDB wire protocol constants (ql2.proto).
const (
	rdbMagicV1_0        = 0x34c2bdc3
	rdbQueryStart       = 1
	rdbTermDBList       = 59
	rdbSuccessAtom      = 1
	rdbSuccessSequence  = 2
	rdbClientError      = 16
	rdbCompileError     = 17
	rdbRuntimeError     = 18
	rdbMaxHandshakeMsg  = 4 << 10
	rdbMaxResponseBytes = 4 << 20
	rdbMaxSCRAMIter     = 1 << 18 // RethinkDB uses 4096; more is refused, not computed
)

// rdbConn is one authenticated connection.
type rdbConn struct {
	c     net.Conn
	r     *bufio.Reader
	token uint64
}

// rdbDial connects and authenticates as user, honouring ctx's deadline.
func rdbDial(ctx context.Context, address, user, password string) (*rdbConn, error) {
	var d net.Dialer
	c, err := d.DialContext(ctx, "tcp", address)
	if err != nil {
		return nil, err
	}
	return rdbHandshake(ctx, c, user, password)
}

// rdbHandshake authenticates on an open connection, closing it on failure.
func rdbHandshake(ctx context.Context, c net.Conn, user, password string) (*rdbConn, error) {
	if dl, ok := ctx.Deadline(); ok {
		c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rc := &rdbConn{c: c, r: bufio.NewReader(c)}
	if err := rc.handshake(user, password); err != nil {
		c.Close()
		return nil, ctxErr(ctx, err)
	}
	return rc, nil
}

func (rc *rdbConn) Close() error { return rc.c.Close() }

// handshake runs the V1_0 handshake with SCRAM-SHA-256 (RFC 5802/7677),
// checking the server's signature too.
func (rc *rdbConn) handshake(user, password string) error {
	if user == "" {
		user = "admin"
	}
	var magic [4]byte
	binary.LittleEndian.PutUint32(magic[:], rdbMagicV1_0)
	if _, err := rc.c.Write(magic[:]); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	var version struct {
		Success bool   `json:"success"`
		Max     int    `json:"max_protocol_version"`
		Min     int    `json:"min_protocol_version"`
		Server  string `json:"server_version"`
	}
	if err := rc.readHandshake(&version); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	if version.Min > 0 || version.Max < 0 {
		return fmt.Errorf("handshake: server %s speaks protocol versions %d-%d, not 0", version.Server, version.Min, version.Max)
	}
	nonceBytes := make([]byte, 18)
	rand.Read(nonceBytes)
	cnonce := base64.StdEncoding.EncodeToString(nonceBytes)
	bare := "n=" + saslName(user) + ",r=" + cnonce
	if err := rc.writeHandshake(map[string]any{
		"protocol_version":      0,
		"authentication_method": "SCRAM-SHA-256",
		"authentication":        "n,," + bare,
	}); err != nil {
		return fmt.Errorf("handshake: %w", err)
	}
	var first struct {
		Authentication string `json:"authentication"`
	}
	if err := rc.readHandshake(&first); err != nil {
		return fmt.Errorf("authentication: %w", err)
	}
	attrs := scramAttrs(first.Authentication)
	nonce, saltB64, iterStr := attrs["r"], attrs["s"], attrs["i"]
	salt, err := base64.StdEncoding.DecodeString(saltB64)
	iters, ierr := strconv.Atoi(iterStr)
	if !strings.HasPrefix(nonce, cnonce) || len(nonce) == len(cnonce) || err != nil || ierr != nil || iters < 1 || iters > rdbMaxSCRAMIter {
		return fmt.Errorf("authentication: malformed server-first message")
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, iters, sha256.Size)
	if err != nil {
		return fmt.Errorf("authentication: %w", err)
	}
	clientKey := hmacSum(salted, "Client Key")
	storedKey := sha256.Sum256(clientKey)
	withoutProof := "c=biws,r=" + nonce
	authMsg := bare + "," + first.Authentication + "," + withoutProof
	sig := hmacSum(storedKey[:], authMsg)
	proof := make([]byte, len(clientKey))
	for i := range proof {
		proof[i] = clientKey[i] ^ sig[i]
	}
	if err := rc.writeHandshake(map[string]any{
		"authentication": withoutProof + ",p=" + base64.StdEncoding.EncodeToString(proof),
	}); err != nil {
		return fmt.Errorf("authentication: %w", err)
	}
	var final struct {
		Authentication string `json:"authentication"`
	}
	if err := rc.readHandshake(&final); err != nil {
		return fmt.Errorf("authentication: %w", err)
	}
	want := hmacSum(hmacSum(salted, "Server Key"), authMsg)
	got, err := base64.StdEncoding.DecodeString(scramAttrs(final.Authentication)["v"])
	if err != nil || subtle.ConstantTimeCompare(got, want) != 1 {
		return fmt.Errorf("authentication: the server's signature does not match (not the server it claims to be)")
	}
	return nil
}

func hmacSum(key []byte, msg string) []byte {
	h := hmac.New(sha256.New, key)
	h.Write([]byte(msg))
	return h.Sum(nil)
}

// saslName escapes a user name for SCRAM.
func saslName(s string) string {
	return strings.NewReplacer("=", "=3D", ",", "=2C").Replace(s)
}

func scramAttrs(s string) map[string]string {
	out := map[string]string{}
	for part := range strings.SplitSeq(s, ",") {
		if k, v, ok := strings.Cut(part, "="); ok && len(k) == 1 {
			if _, dup := out[k]; !dup {
				out[k] = v
			}
		}
	}
	return out
}

func (rc *rdbConn) writeHandshake(v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = rc.c.Write(append(b, 0))
	return err
}

// readHandshake reads one NUL-terminated JSON message; {"success":false}
// becomes an error carrying the server's text.
func (rc *rdbConn) readHandshake(v any) error {
	var buf []byte
	for {
		b, err := rc.r.ReadByte()
		if err != nil {
			if errors.Is(err, io.EOF) {
				return fmt.Errorf("connection closed by the server")
			}
			return err
		}
		if b == 0 {
			break
		}
		if len(buf) >= rdbMaxHandshakeMsg {
			return fmt.Errorf("handshake message longer than %d bytes", rdbMaxHandshakeMsg)
		}
		buf = append(buf, b)
	}
	if !bytes.HasPrefix(buf, []byte("{")) {
		return fmt.Errorf("server says: %s", truncate(string(buf), 200))
	}
	var status struct {
		Success *bool  `json:"success"`
		Error   string `json:"error"`
		Code    int    `json:"error_code"`
	}
	if err := json.Unmarshal(buf, &status); err != nil {
		return fmt.Errorf("malformed handshake message: %v", err)
	}
	if status.Success == nil || !*status.Success {
		return fmt.Errorf("refused: %s (error %d)", orNone(status.Error), status.Code)
	}
	return json.Unmarshal(buf, v)
}

// DBList runs r.dbList() and returns the database names.
func (rc *rdbConn) DBList(ctx context.Context) ([]string, error) {
	if dl, ok := ctx.Deadline(); ok {
		rc.c.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { rc.c.SetDeadline(time.Unix(1, 0)) })
	defer stop()
	rc.token++
	q, _ := json.Marshal([]any{rdbQueryStart, []any{rdbTermDBList, []any{}}, map[string]any{}})
	frame := make([]byte, 12, 12+len(q))
	binary.LittleEndian.PutUint64(frame[0:8], rc.token)
	binary.LittleEndian.PutUint32(frame[8:12], uint32(len(q)))
	if _, err := rc.c.Write(append(frame, q...)); err != nil {
		return nil, ctxErr(ctx, err)
	}
	var head [12]byte
	if _, err := io.ReadFull(rc.r, head[:]); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("reading the response: %w", err))
	}
	if tok := binary.LittleEndian.Uint64(head[0:8]); tok != rc.token {
		return nil, fmt.Errorf("response for query %d, want %d", tok, rc.token)
	}
	n := binary.LittleEndian.Uint32(head[8:12])
	if n > rdbMaxResponseBytes {
		return nil, fmt.Errorf("response of %d bytes exceeds %d", n, rdbMaxResponseBytes)
	}
	body := make([]byte, n)
	if _, err := io.ReadFull(rc.r, body); err != nil {
		return nil, ctxErr(ctx, fmt.Errorf("reading the response: %w", err))
	}
	var resp struct {
		T int               `json:"t"`
		R []json.RawMessage `json:"r"`
	}
	if err := json.Unmarshal(body, &resp); err != nil {
		return nil, fmt.Errorf("malformed response: %v", err)
	}
	switch resp.T {
	case rdbSuccessAtom:
		var dbs []string
		if len(resp.R) != 1 || json.Unmarshal(resp.R[0], &dbs) != nil {
			return nil, fmt.Errorf("dbList answered %s, not a list of names", truncate(string(body), 200))
		}
		return dbs, nil
	case rdbSuccessSequence:
		dbs := make([]string, 0, len(resp.R))
		for _, r := range resp.R {
			var s string
			if json.Unmarshal(r, &s) != nil {
				return nil, fmt.Errorf("dbList answered %s, not a list of names", truncate(string(body), 200))
			}
			dbs = append(dbs, s)
		}
		return dbs, nil
	case rdbClientError, rdbCompileError, rdbRuntimeError:
		var msg string
		if len(resp.R) > 0 {
			json.Unmarshal(resp.R[0], &msg)
		}
		return nil, fmt.Errorf("query error (type %d): %s", resp.T, orNone(msg))
	}
	return nil, fmt.Errorf("unexpected response type %d", resp.T)
}
