package rdbstandin

import (
	"bufio"
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
	"strings"
)

// Protocol constants of the V1_0 handshake, as RethinkDB 2.4 has them.
const (
	magicV1_0 = 0x34c2bdc3 // VersionDummy_V1_0 = 885177795

	protocolVersion     = 0
	authMethod          = "SCRAM-SHA-256"
	serverVersionString = "2.4.4-rdbstandin"

	// scramIterations is RethinkDB's default PBKDF2 iteration count.
	scramIterations = 4096
	scramSaltLen    = 16
	serverNonceLen  = 18

	// unsupportedVersionLine is what RethinkDB writes (then closes) when the
	// first four bytes are not a protocol version it speaks.
	unsupportedVersionLine = "ERROR: Received an unsupported protocol version. This port is for " +
		"RethinkDB queries. Does your client driver version not match the server?\n"
)

// authError is a handshake failure as RethinkDB reports it: a JSON message
// {"success":false,"error":Text,"error_code":Code}. The codes are RethinkDB's
// (clustering/administration/auth/scram_authenticator.cc).
type authError struct {
	Code int
	Text string
}

func (e *authError) Error() string { return fmt.Sprintf("auth error %d: %s", e.Code, e.Text) }

var (
	errInvalidEncoding   = &authError{10, "Invalid encoding"}
	errExtensions        = &authError{11, "Extensions not supported"}
	errWrongPassword     = &authError{12, "Wrong password"}
	errChannelBinding    = &authError{15, "Channel binding is not supported"}
	errUnknownUser       = &authError{17, "Unknown user"}
	errBadUsernameEncode = &authError{18, "Invalid username encoding"}
	errOther             = &authError{20, "Other error"}
)

// credentials is the one user the stand-in knows, with the SCRAM material
// derived once at Start (PBKDF2 is deliberately slow).
type credentials struct {
	user      string
	salt      []byte
	iters     int
	storedKey []byte // H(HMAC(SaltedPassword, "Client Key"))
	serverKey []byte // HMAC(SaltedPassword, "Server Key")
}

func newCredentials(user, password string) (*credentials, error) {
	salt := make([]byte, scramSaltLen)
	if _, err := rand.Read(salt); err != nil {
		return nil, fmt.Errorf("generating SCRAM salt: %w", err)
	}
	salted, err := pbkdf2.Key(sha256.New, password, salt, scramIterations, sha256.Size)
	if err != nil {
		return nil, fmt.Errorf("deriving SCRAM key for user %q: %w", user, err)
	}
	clientKey := hmacSHA256(salted, "Client Key")
	stored := sha256.Sum256(clientKey)
	return &credentials{
		user:      user,
		salt:      salt,
		iters:     scramIterations,
		storedKey: stored[:],
		serverKey: hmacSHA256(salted, "Server Key"),
	}, nil
}

func hmacSHA256(key []byte, msg string) []byte {
	m := hmac.New(sha256.New, key)
	m.Write([]byte(msg))
	return m.Sum(nil)
}

// readNullTerminated reads one NUL-terminated handshake message, without the
// NUL. It fails as soon as more than max bytes have come without a NUL.
func readNullTerminated(r *bufio.Reader, max int) ([]byte, error) {
	var buf []byte
	for len(buf) <= max {
		c, err := r.ReadByte()
		if err != nil {
			return nil, err
		}
		if c == 0 {
			return buf, nil
		}
		buf = append(buf, c)
	}
	return nil, fmt.Errorf("handshake message longer than %d bytes", max)
}

// clientFirst is the decoded client-first message.
type clientFirst struct {
	User  string
	Nonce string
	Bare  string // client-first-message-bare: "n=user,r=nonce"
}

// parseClientFirst decodes the client's first JSON message:
// {"protocol_version":0,"authentication":"n,,n=USER,r=NONCE","authentication_method":"SCRAM-SHA-256"}.
func parseClientFirst(b []byte) (*clientFirst, error) {
	var msg struct {
		ProtocolVersion *int64 `json:"protocol_version"`
		Authentication  string `json:"authentication"`
		Method          string `json:"authentication_method"`
	}
	if err := json.Unmarshal(b, &msg); err != nil {
		return nil, errInvalidEncoding
	}
	if msg.ProtocolVersion == nil || *msg.ProtocolVersion != protocolVersion {
		return nil, &authError{1, fmt.Sprintf("Unsupported protocol version, expected %d.", protocolVersion)}
	}
	if msg.Method != authMethod {
		return nil, &authError{1, fmt.Sprintf("Unsupported authentication method %q, expected %q.", msg.Method, authMethod)}
	}
	a := msg.Authentication
	if !strings.HasPrefix(a, "n,") {
		return nil, errChannelBinding
	}
	i := strings.IndexByte(a[2:], ',')
	if i < 0 {
		return nil, errInvalidEncoding
	}
	bare := a[2+i+1:]
	attrs, err := splitAttributes(bare)
	if err != nil {
		return nil, err
	}
	for k := range attrs {
		switch k {
		case 'n', 'r':
		case 'm':
			return nil, errExtensions
		default:
			return nil, errInvalidEncoding
		}
	}
	name, okN := attrs['n']
	nonce, okR := attrs['r']
	if !okN || !okR || nonce == "" {
		return nil, errInvalidEncoding
	}
	user, err := saslnameDecode(name)
	if err != nil {
		return nil, err
	}
	return &clientFirst{User: user, Nonce: nonce, Bare: bare}, nil
}

// clientFinal is the decoded client-final message.
type clientFinal struct {
	Channel      string // c=, must be "biws" (base64 of "n,,")
	Nonce        string // r=
	Proof        []byte // p=, decoded
	WithoutProof string // client-final-message-without-proof
}

// parseClientFinal decodes {"authentication":"c=biws,r=NONCE,p=PROOF"}.
func parseClientFinal(b []byte) (*clientFinal, error) {
	var msg struct {
		Authentication string `json:"authentication"`
	}
	if err := json.Unmarshal(b, &msg); err != nil {
		return nil, errInvalidEncoding
	}
	a := msg.Authentication
	attrs, err := splitAttributes(a)
	if err != nil {
		return nil, err
	}
	for k := range attrs {
		switch k {
		case 'c', 'r', 'p':
		case 'm':
			return nil, errExtensions
		default:
			return nil, errInvalidEncoding
		}
	}
	c, okC := attrs['c']
	r, okR := attrs['r']
	p, okP := attrs['p']
	if !okC || !okR || !okP {
		return nil, errInvalidEncoding
	}
	proof, err := base64.StdEncoding.DecodeString(p)
	if err != nil {
		return nil, errInvalidEncoding
	}
	i := strings.Index(a, ",p=")
	if i < 0 {
		return nil, errInvalidEncoding
	}
	return &clientFinal{Channel: c, Nonce: r, Proof: proof, WithoutProof: a[:i]}, nil
}

// splitAttributes splits "k=v,k=v" SCRAM attributes; keys are one byte and
// may not repeat.
func splitAttributes(s string) (map[byte]string, error) {
	attrs := map[byte]string{}
	for s != "" {
		part := s
		if i := strings.IndexByte(s, ','); i >= 0 {
			part, s = s[:i], s[i+1:]
			if s == "" {
				return nil, errInvalidEncoding // trailing comma
			}
		} else {
			s = ""
		}
		if len(part) < 2 || part[1] != '=' {
			return nil, errInvalidEncoding
		}
		if _, dup := attrs[part[0]]; dup {
			return nil, errInvalidEncoding
		}
		attrs[part[0]] = part[2:]
	}
	return attrs, nil
}

// saslnameDecode undoes SCRAM's username escaping (=2C is ',', =3D is '=').
func saslnameDecode(s string) (string, error) {
	var b strings.Builder
	for i := 0; i < len(s); i++ {
		if s[i] != '=' {
			b.WriteByte(s[i])
			continue
		}
		if i+2 >= len(s) {
			return "", errBadUsernameEncode
		}
		switch s[i+1 : i+3] {
		case "2C":
			b.WriteByte(',')
		case "3D":
			b.WriteByte('=')
		default:
			return "", errBadUsernameEncode
		}
		i += 2
	}
	if b.Len() == 0 {
		return "", errBadUsernameEncode
	}
	return b.String(), nil
}

// handshakeStep writes one NUL-terminated JSON handshake message.
func writeHandshakeMsg(w io.Writer, v any) error {
	b, err := json.Marshal(v)
	if err != nil {
		return err
	}
	_, err = w.Write(append(b, 0))
	return err
}

func writeAuthError(w io.Writer, e *authError) error {
	return writeHandshakeMsg(w, struct {
		Success bool   `json:"success"`
		Error   string `json:"error"`
		Code    int    `json:"error_code"`
	}{false, e.Text, e.Code})
}

// handshake runs the server side of the V1_0 handshake on rw. It returns nil
// once the client is authenticated. On a protocol or authentication failure
// it has already told the client (where the protocol allows) and returns the
// error; the caller closes the connection.
func handshake(r *bufio.Reader, w io.Writer, cred *credentials, maxMsg int) error {
	var magic [4]byte
	if _, err := io.ReadFull(r, magic[:]); err != nil {
		return fmt.Errorf("reading protocol magic: %w", err)
	}
	if v := binary.LittleEndian.Uint32(magic[:]); v != magicV1_0 {
		_, _ = io.WriteString(w, unsupportedVersionLine+"\x00")
		return fmt.Errorf("unsupported protocol magic %#x", v)
	}
	// The server announces its versions first, then reads client-first.
	if err := writeHandshakeMsg(w, struct {
		Success bool   `json:"success"`
		Min     int    `json:"min_protocol_version"`
		Max     int    `json:"max_protocol_version"`
		Version string `json:"server_version"`
	}{true, protocolVersion, protocolVersion, serverVersionString}); err != nil {
		return fmt.Errorf("writing version message: %w", err)
	}

	first, err := readNullTerminated(r, maxMsg)
	if err != nil {
		return fmt.Errorf("reading client-first message: %w", err)
	}
	cf, err := parseClientFirst(first)
	if err != nil {
		return replyAuthErr(w, err)
	}
	known := cf.User == cred.user
	salt, iters := cred.salt, cred.iters
	if !known {
		// Like RethinkDB: answer with a made-up salt and fail at the end, so
		// the first exchange does not tell whether the user exists.
		salt = make([]byte, scramSaltLen)
		_, _ = rand.Read(salt)
	}
	sn := make([]byte, serverNonceLen)
	if _, err := rand.Read(sn); err != nil {
		return fmt.Errorf("generating server nonce: %w", err)
	}
	nonce := cf.Nonce + base64.StdEncoding.EncodeToString(sn)
	serverFirst := fmt.Sprintf("r=%s,s=%s,i=%d", nonce, base64.StdEncoding.EncodeToString(salt), iters)
	if err := writeHandshakeMsg(w, struct {
		Success        bool   `json:"success"`
		Authentication string `json:"authentication"`
	}{true, serverFirst}); err != nil {
		return fmt.Errorf("writing server-first message: %w", err)
	}

	final, err := readNullTerminated(r, maxMsg)
	if err != nil {
		return fmt.Errorf("reading client-final message: %w", err)
	}
	if !known {
		return replyAuthErr(w, errUnknownUser)
	}
	cfin, err := parseClientFinal(final)
	if err != nil {
		return replyAuthErr(w, err)
	}
	if cfin.Channel != "biws" {
		return replyAuthErr(w, errInvalidEncoding)
	}
	if cfin.Nonce != nonce {
		return replyAuthErr(w, errOther)
	}
	authMsg := cf.Bare + "," + serverFirst + "," + cfin.WithoutProof
	if !verifyProof(cred.storedKey, authMsg, cfin.Proof) {
		return replyAuthErr(w, errWrongPassword)
	}
	sig := hmacSHA256(cred.serverKey, authMsg)
	if err := writeHandshakeMsg(w, struct {
		Success        bool   `json:"success"`
		Authentication string `json:"authentication"`
	}{true, "v=" + base64.StdEncoding.EncodeToString(sig)}); err != nil {
		return fmt.Errorf("writing server-final message: %w", err)
	}
	return nil
}

// verifyProof checks a SCRAM ClientProof: ClientKey = Proof XOR
// HMAC(StoredKey, AuthMessage), and H(ClientKey) must equal StoredKey.
func verifyProof(storedKey []byte, authMsg string, proof []byte) bool {
	if len(proof) != sha256.Size {
		return false
	}
	sig := hmacSHA256(storedKey, authMsg)
	clientKey := make([]byte, sha256.Size)
	for i := range clientKey {
		clientKey[i] = proof[i] ^ sig[i]
	}
	got := sha256.Sum256(clientKey)
	return subtle.ConstantTimeCompare(got[:], storedKey) == 1
}

func replyAuthErr(w io.Writer, err error) error {
	var ae *authError
	if !errors.As(err, &ae) {
		ae = errOther
	}
	_ = writeAuthError(w, ae)
	return err
}
