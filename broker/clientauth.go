package broker

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	jose "github.com/go-jose/go-jose/v4"
	"github.com/go-jose/go-jose/v4/jwt"
	"golang.org/x/crypto/argon2"

	"github.com/applianced/applianced/internal/admin"
)

// Client authentication methods, as they appear in audit events and in the
// RFC 8414 metadata.
const (
	AuthPeerCred      = "peer_credentials"
	AuthPrivateKeyJWT = "private_key_jwt"
	AuthClientSecret  = "client_secret"
	assertionType     = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"
	maxAssertionAhead = 5 * time.Minute
)

// errClient is a failed client authentication; its text is safe to return.
type errClient struct{ msg string }

func (e *errClient) Error() string { return e.msg }

func clientErr(format string, args ...any) error { return &errClient{fmt.Sprintf(format, args...)} }

// Peer is the process on the other end of an agent-socket connection, as
// the kernel reported it at connect time.
type Peer = admin.Caller

type peerKey struct{}

// ConnContext is for the agent socket's http.Server.ConnContext: it reads
// the peer's kernel credentials once per connection so the handlers know
// which local process is asking. Connections that are not Unix sockets get
// nothing, and then only a client assertion or secret authenticates.
func ConnContext(ctx context.Context, c net.Conn) context.Context {
	uc, ok := c.(*net.UnixConn)
	if !ok {
		return ctx
	}
	p, err := admin.PeerCaller(uc)
	if err != nil {
		return ctx
	}
	return context.WithValue(ctx, peerKey{}, p)
}

// PeerFrom returns the agent-socket peer of a request's context.
func PeerFrom(ctx context.Context) (Peer, bool) {
	p, ok := ctx.Value(peerKey{}).(Peer)
	return p, ok
}

// clientAuth is the outcome of authenticating the caller of an endpoint.
type clientAuth struct {
	agent  *agentEntry
	method string
	peer   *Peer
}

// authenticateClient identifies the agent calling. Exactly one method may
// be used; on the agent socket with no other method, the peer credentials
// are the method. A nil agent with a nil error means "no client
// authentication presented" (allowed by some endpoints).
func (b *Broker) authenticateClient(ctx context.Context, f form, basicUser, basicPass string, hasBasic bool) (clientAuth, error) {
	cc := b.cfg.Load()
	peer, onSocket := PeerFrom(ctx)
	var res clientAuth
	if onSocket {
		res.peer = &peer
	}
	methods := 0
	if f.has("client_assertion") || f.has("client_assertion_type") {
		methods++
	}
	if f.has("client_secret") {
		methods++
	}
	if hasBasic {
		methods++
	}
	if methods > 1 {
		return res, clientErr("more than one client authentication method")
	}
	claimed := f.get("client_id")
	switch {
	case f.has("client_assertion") || f.has("client_assertion_type"):
		if f.get("client_assertion_type") != assertionType {
			return res, clientErr("client_assertion_type must be %s", assertionType)
		}
		a, err := b.checkAssertion(ctx, cc, f.get("client_assertion"))
		if err != nil {
			return res, err
		}
		if claimed != "" && claimed != a.Name {
			return res, clientErr("client_id does not match the assertion")
		}
		res.agent, res.method = a, AuthPrivateKeyJWT
	case f.has("client_secret") || hasBasic:
		id, secret := claimed, f.get("client_secret")
		if hasBasic {
			if claimed != "" && claimed != basicUser {
				return res, clientErr("client_id does not match the Authorization header")
			}
			id, secret = basicUser, basicPass
		}
		a, ok := cc.agents[id]
		h := dummySecret // same work for an unknown name, so timing does not tell names apart
		if ok && a.secret != nil {
			h = a.secret
		}
		match, err := h.verifyLimited(ctx, secret)
		if err != nil {
			return res, err
		}
		if !match || h == dummySecret {
			return res, clientErr("client authentication failed")
		}
		res.agent, res.method = a, AuthClientSecret
	case onSocket:
		a, err := b.agentForPeer(cc, peer)
		if err != nil {
			return res, err
		}
		if claimed != "" && claimed != a.Name {
			return res, clientErr("client_id does not match the peer's agent")
		}
		res.agent, res.method = a, AuthPeerCred
	default:
		return res, nil
	}
	return res, nil
}

// agentForPeer maps kernel credentials to an agent: by uid first, then by
// the systemd unit of the peer process.
func (b *Broker) agentForPeer(cc *compiled, p Peer) (*agentEntry, error) {
	if a, ok := cc.byUID[p.UID]; ok {
		return a, nil
	}
	if len(cc.byUnit) > 0 && p.PID > 0 {
		for unit, a := range cc.byUnit {
			if inSystemUnit(cgroupRoot(), unit, p.PID) {
				return a, nil
			}
		}
	}
	return nil, clientErr("no agent is registered for uid %d on the agent socket", p.UID)
}

// inSystemUnit reports whether pid runs in the system unit named unit: in
// its cgroup, or one it made below itself (Delegate=), as listed by the
// cgroup file system, under the root's system.slice or another top-level
// slice of the system's service manager. A unit a user's own service
// manager runs lives under user.slice, and a container's under
// machine.slice: any user can start a unit of any name there, so those
// never count. Reading cgroup.procs needs no access to the peer's /proc
// entry, which the daemon's sandbox (ProtectProc=invisible) hides.
func inSystemUnit(root, unit string, pid int) bool {
	if root == "" || strings.ContainsAny(unit, "/\x00") || unit == "" {
		return false
	}
	slices, _ := filepath.Glob(filepath.Join(root, "*.slice"))
	want := strconv.Itoa(pid)
	for _, sl := range slices {
		if b := filepath.Base(sl); b == "user.slice" || b == "machine.slice" {
			continue
		}
		if procsHold(filepath.Join(sl, unit), want, 4) {
			return true
		}
	}
	return false
}

// procsHold reports whether dir's cgroup.procs, or a sub-cgroup's down to
// depth levels, lists pid.
func procsHold(dir, pid string, depth int) bool {
	b, _ := os.ReadFile(filepath.Join(dir, "cgroup.procs"))
	for _, line := range strings.Split(string(b), "\n") {
		if line == pid {
			return true
		}
	}
	if depth == 0 {
		return false
	}
	entries, _ := os.ReadDir(dir) // none when the unit is not there
	for _, e := range entries {
		if e.IsDir() && procsHold(filepath.Join(dir, e.Name()), pid, depth-1) {
			return true
		}
	}
	return false
}

// cgroupRoot is where the unified (v2) cgroup hierarchy is mounted, or ""
// when none is.
func cgroupRoot() string {
	data, err := os.ReadFile("/proc/self/mountinfo")
	if err != nil {
		return ""
	}
	for _, line := range strings.Split(string(data), "\n") {
		pre, post, ok := strings.Cut(line, " - ")
		if ok && strings.HasPrefix(post, "cgroup2 ") {
			if f := strings.Fields(pre); len(f) >= 5 {
				return f[4]
			}
		}
	}
	return ""
}

// assertionClaims is an RFC 7523 client assertion.
type assertionClaims struct {
	jwt.Claims
}

// checkAssertion verifies a private_key_jwt client assertion: EdDSA with
// the agent's registered key, iss = sub = agent, aud = the token endpoint,
// exp at most 5 minutes ahead, jti not seen before.
func (b *Broker) checkAssertion(ctx context.Context, cc *compiled, raw string) (*agentEntry, error) {
	if raw == "" || len(raw) > maxTokenBytes {
		return nil, clientErr("client_assertion missing or too large")
	}
	jws, err := jose.ParseSignedCompact(raw, []jose.SignatureAlgorithm{jose.EdDSA})
	if err != nil || len(jws.Signatures) != 1 {
		return nil, clientErr("client_assertion is not an EdDSA-signed JWT")
	}
	var unverified assertionClaims
	if err := json.Unmarshal(jws.UnsafePayloadWithoutVerification(), &unverified); err != nil {
		return nil, clientErr("client_assertion has malformed claims")
	}
	a, ok := cc.agents[unverified.Subject]
	if !ok || a.pub == nil {
		if !nameRE.MatchString(unverified.Subject) {
			return nil, clientErr("client_assertion: sub is not an agent name")
		}
		return nil, clientErr("client_assertion: no agent with a registered key named %q", unverified.Subject)
	}
	payload, err := jws.Verify(a.pub)
	if err != nil {
		return nil, clientErr("client_assertion signature does not verify")
	}
	var c assertionClaims
	if err := json.Unmarshal(payload, &c); err != nil {
		return nil, clientErr("client_assertion has malformed claims")
	}
	now := b.now()
	if c.Issuer != a.Name || c.Subject != a.Name {
		return nil, clientErr("client_assertion iss and sub must both be the agent's name")
	}
	if c.Expiry == nil || c.ID == "" || len(c.ID) > 256 {
		return nil, clientErr("client_assertion needs exp and jti")
	}
	if err := c.ValidateWithLeeway(jwt.Expected{Time: now}, leeway); err != nil {
		return nil, clientErr("client_assertion: expired or not yet valid")
	}
	if !c.Audience.Contains(b.tokenEndpoint()) && !c.Audience.Contains(b.issuer) {
		return nil, clientErr("client_assertion aud must be the token endpoint %s", b.tokenEndpoint())
	}
	exp := c.Expiry.Time()
	if exp.After(now.Add(maxAssertionAhead + leeway)) {
		return nil, clientErr("client_assertion exp is more than 5 minutes ahead")
	}
	fresh, err := b.store.UseAssertion(ctx, a.Name+"\x00"+c.ID, exp.Add(leeway))
	if err != nil {
		return nil, err
	}
	if !fresh {
		return nil, clientErr("client_assertion replayed (jti already used)")
	}
	return a, nil
}

func (b *Broker) tokenEndpoint() string { return b.issuer + "/oauth2/token" }

// argon2id parameters for new client secret hashes.
const (
	argonTime    = 2
	argonMemory  = 19 * 1024 // KiB
	argonThreads = 1
	argonKeyLen  = 32
)

type argon2Hash struct {
	time, memory uint32
	threads      uint8
	salt, key    []byte
}

var dummySecret = &argon2Hash{time: argonTime, memory: argonMemory, threads: argonThreads,
	salt: make([]byte, 16), key: make([]byte, argonKeyLen)}

// HashClientSecret returns the argon2id hash of secret in the PHC string
// form ("$argon2id$v=19$m=19456,t=2,p=1$SALT$KEY") for client_secret_hash.
func HashClientSecret(secret string) (string, error) {
	salt := make([]byte, 16)
	if _, err := io.ReadFull(rand.Reader, salt); err != nil {
		return "", fmt.Errorf("broker: salt: %w", err)
	}
	key := argon2.IDKey([]byte(secret), salt, argonTime, argonMemory, argonThreads, argonKeyLen)
	enc := base64.RawStdEncoding
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s", argon2.Version, argonMemory, argonTime, argonThreads,
		enc.EncodeToString(salt), enc.EncodeToString(key)), nil
}

func parseArgon2id(s string) (*argon2Hash, error) {
	parts := strings.Split(s, "$")
	bad := errors.New("not an argon2id hash like \"$argon2id$v=19$m=19456,t=2,p=1$SALT$KEY\" (see HashClientSecret)")
	if len(parts) != 6 || parts[0] != "" || parts[1] != "argon2id" || parts[2] != "v="+strconv.Itoa(argon2.Version) {
		return nil, bad
	}
	var h argon2Hash
	var p uint32
	if _, err := fmt.Sscanf(parts[3], "m=%d,t=%d,p=%d", &h.memory, &h.time, &p); err != nil {
		return nil, bad
	}
	if h.memory < 8*1024 || h.memory > 1<<21 || h.time < 1 || h.time > 16 || p < 1 || p > 16 {
		return nil, errors.New("argon2id parameters out of range (m 8192..2097152 KiB, t 1..16, p 1..16)")
	}
	h.threads = uint8(p)
	var err error
	if h.salt, err = base64.RawStdEncoding.DecodeString(parts[4]); err != nil || len(h.salt) < 8 {
		return nil, bad
	}
	if h.key, err = base64.RawStdEncoding.DecodeString(parts[5]); err != nil || len(h.key) < 16 {
		return nil, bad
	}
	return &h, nil
}

// argonSlots bounds concurrent argon2id checks: each takes m KiB of memory,
// so unbounded concurrency would let anyone exhaust the appliance's memory
// with bogus client secrets.
var argonSlots = make(chan struct{}, 2)

// verifyLimited is verify within argonSlots; it gives up when ctx ends.
func (h *argon2Hash) verifyLimited(ctx context.Context, secret string) (bool, error) {
	select {
	case argonSlots <- struct{}{}:
	case <-ctx.Done():
		return false, fmt.Errorf("broker: waiting to check a client secret: %w", ctx.Err())
	}
	defer func() { <-argonSlots }()
	return h.verify(secret), nil
}

func (h *argon2Hash) verify(secret string) bool {
	got := argon2.IDKey([]byte(secret), h.salt, h.time, h.memory, h.threads, uint32(len(h.key)))
	return subtle.ConstantTimeCompare(got, h.key) == 1
}
