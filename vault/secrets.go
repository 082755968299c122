package vault

import (
	"bytes"
	"context"
	"crypto/rand"
	"crypto/sha256"
	"crypto/subtle"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
	"time"

	bolt "go.etcd.io/bbolt"

	"github.com/applianced/applianced/audit"
)

// PutRequest is a secret to store.
type PutRequest struct {
	Name  string
	Type  Type
	Value []byte // raw for password, api_key, opaque; a JSON object for the structured types
	// AllowedTools are the [[tool]] names that may use the secret. Empty
	// means no tool may (internal callers still can, see ForInternal).
	AllowedTools []string
}

// Meta describes a secret without its value.
type Meta struct {
	Name         string        `json:"name"`
	Type         Type          `json:"type,omitempty"` // absent for a refused record
	Version      uint64        `json:"version"`        // the current version
	Versions     []VersionMeta `json:"versions"`
	Created      time.Time     `json:"created"`
	Rotated      time.Time     `json:"rotated"` // when the current version was written
	AllowedTools []string      `json:"allowed_tools"`
	// Refused, when not empty, says why the stored record is refused (see
	// Refusal); nothing else of it is given, since none of it can be
	// trusted. Only List returns such entries.
	Refused string `json:"refused,omitempty"`
}

// Refusal reasons of a stored record, as Meta.Refused and Status give them.
const (
	RefusedBadMAC    = "metadata does not authenticate"
	RefusedNoMAC     = "record has no MAC"
	RefusedUndecoded = "record does not decode"
)

// refusal names why checkedRecord refused a record.
func refusal(err error) string {
	switch {
	case errors.Is(err, errBadMAC):
		return RefusedBadMAC
	case errors.Is(err, errNoMAC):
		return RefusedNoMAC
	}
	return RefusedUndecoded
}

// VersionMeta describes one kept version.
type VersionMeta struct {
	Version uint64    `json:"version"`
	Term    uint32    `json:"term"` // the keyring term it is encrypted under
	Created time.Time `json:"created"`
}

func (r *record) meta(name string) Meta {
	m := Meta{
		Name:         name,
		Type:         r.typ,
		Version:      r.current().n,
		Created:      time.Unix(0, r.created).UTC(),
		Rotated:      time.Unix(0, r.rotated).UTC(),
		AllowedTools: slices.Clone(r.tools),
	}
	if m.AllowedTools == nil {
		m.AllowedTools = []string{}
	}
	for _, ver := range r.versions {
		m.Versions = append(m.Versions, VersionMeta{Version: ver.n, Term: ver.term, Created: time.Unix(0, ver.created).UTC()})
	}
	return m
}

// recordWant is what addVersion expects of the name.
type recordWant int

const (
	anyRecord recordWant = iota
	mustExist
	mustBeNew
)

// errConflict means a record changed between read and write; it cannot
// happen while the name lock is held and is a bug if seen.
var errConflict = errors.New("vault: record changed during the write")

// Put stores a new version of the secret req.Name, creating the secret when
// it does not exist, and sets its allowed_tools to req.AllowedTools. An
// existing secret keeps its type: a put of another type is refused.
func (v *Vault) Put(ctx context.Context, who audit.Actor, req PutRequest) (Meta, error) {
	ev := &audit.Event{Type: "secret.put", Actor: who, Action: "secret.put", Target: req.Name, Source: "unix",
		Details: map[string]string{"type": req.Type.String()}}
	if err := checkName(req.Name); err != nil {
		return Meta{}, v.refuse(ctx, ev, fmt.Errorf("vault: %w: %w", ErrInvalid, err))
	}
	if !req.Type.valid() {
		return Meta{}, v.refuse(ctx, ev, fmt.Errorf("vault: %w: unknown secret type %s", ErrInvalid, req.Type))
	}
	tools, err := cleanTools(req.AllowedTools)
	if err != nil {
		return Meta{}, v.refuse(ctx, ev, err)
	}
	plain, err := normalize(req.Type, req.Value)
	if err != nil {
		return Meta{}, v.refuse(ctx, ev, err)
	}
	defer clear(plain)
	ev.Details["allowed_tools"] = fmt.Sprint(tools)
	return v.addVersion(ctx, ev, nsSecret, bucketSecrets, req.Name, req.Type, plain, tools, anyRecord)
}

// Rotate stores a new version of an existing secret, keeping its type and
// allowed_tools.
func (v *Vault) Rotate(ctx context.Context, who audit.Actor, name string, value []byte) (Meta, error) {
	ev := &audit.Event{Type: "secret.rotate", Actor: who, Action: "secret.rotate", Target: name, Source: "unix",
		Details: map[string]string{}}
	if err := checkName(name); err != nil {
		return Meta{}, v.refuse(ctx, ev, fmt.Errorf("vault: %w: %w", ErrInvalid, err))
	}
	m, err := v.Describe(ctx, name)
	if err != nil {
		return Meta{}, v.refuse(ctx, ev, err)
	}
	plain, err := normalize(m.Type, value)
	if err != nil {
		return Meta{}, v.refuse(ctx, ev, err)
	}
	defer clear(plain)
	ev.Details["type"] = m.Type.String()
	return v.addVersion(ctx, ev, nsSecret, bucketSecrets, name, m.Type, plain, nil, mustExist)
}

// cleanTools checks, sorts and de-duplicates allowed_tools.
func cleanTools(in []string) ([]string, error) {
	if len(in) > maxTools {
		return nil, fmt.Errorf("vault: %w: more than %d allowed tools", ErrInvalid, maxTools)
	}
	out := make([]string, 0, len(in))
	for _, t := range in {
		if err := checkName(t); err != nil {
			return nil, fmt.Errorf("vault: %w: allowed tool: %w", ErrInvalid, err)
		}
		out = append(out, t)
	}
	slices.Sort(out)
	return slices.Compact(out), nil
}

// refuse audits a refused request (bad input, unknown name) and returns
// err, or the audit error when the refusal could not be recorded.
func (v *Vault) refuse(ctx context.Context, ev *audit.Event, err error) error {
	ev.Outcome = audit.OutcomeDenied
	if !errors.Is(err, ErrInvalid) && !errors.Is(err, ErrSealed) &&
		(errors.Is(err, ErrAudit) || errors.Is(err, ErrClosed) || errors.Is(err, ErrCorrupt)) {
		ev.Outcome = audit.OutcomeFailure
	}
	ev.Reason = err.Error()
	if aerr := v.appendEvent(ctx, ev); aerr != nil && !errors.Is(err, ErrAudit) {
		return aerr
	}
	return err
}

// addVersion seals plain as the next version of name and writes it. tools
// nil keeps the record's allowed_tools. want says whether the name must
// exist already (mustExist), must not (mustBeNew, errExists), or either. The
// event is appended (with the version) before the write; a failed write is
// recorded as a second, failure event.
func (v *Vault) addVersion(ctx context.Context, ev *audit.Event, ns byte, bucket []byte, name string, typ Type,
	plain []byte, tools []string, want recordWant) (Meta, error) {
	l := v.nameLock(ns, name)
	l.Lock()
	defer l.Unlock()
	if err := v.rlock(); err != nil {
		return Meta{}, v.refuse(ctx, ev, fmt.Errorf("vault: %w", err))
	}
	defer v.mu.RUnlock()

	var old []byte
	var rec *record
	err := v.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucket).Get([]byte(name))
		if raw == nil {
			return nil
		}
		old = bytes.Clone(raw)
		r, err := checkedRecord(v.kr, ns, name, old)
		if err != nil {
			return err
		}
		rec = r
		return nil
	})
	if err != nil {
		return Meta{}, v.refuse(ctx, ev, err)
	}
	now := time.Now()
	next := uint64(1)
	switch {
	case rec != nil && want == mustBeNew:
		return Meta{}, errExists
	case rec == nil && want == mustExist:
		return Meta{}, v.refuse(ctx, ev, fmt.Errorf("vault: %w: %q", ErrNotFound, name))
	case rec == nil:
		rec = &record{typ: typ, created: now.UnixNano(), tools: tools}
	case rec.typ != typ:
		return Meta{}, v.refuse(ctx, ev, fmt.Errorf("vault: %w: %q is a %s secret, not %s (delete it first to change its type)",
			ErrInvalid, name, rec.typ, typ))
	default:
		next = rec.current().n + 1
		if tools != nil {
			rec.tools = tools
		}
	}
	ver, err := seal(v.kr.activeTerm(), ns, name, typ, next, plain, now)
	if err != nil {
		return Meta{}, v.refuse(ctx, ev, err)
	}
	rec.versions = append(rec.versions, ver)
	keep := v.cfg.keepVersions()
	if ns == nsSystem {
		keep = systemKeepVersions
	}
	if n := len(rec.versions); n > keep {
		rec.versions = slices.Delete(rec.versions, 0, n-keep)
	}
	rec.rotated = now.UnixNano()
	v.kr.sealRecord(ns, name, rec)
	enc := rec.encode()

	ev.Outcome = audit.OutcomeSuccess
	ev.Details["version"] = strconv.FormatUint(next, 10)
	ev.Details["term"] = strconv.FormatUint(uint64(ver.term), 10)
	if err := v.appendEvent(ctx, ev); err != nil {
		return Meta{}, err
	}
	err = v.write(v.db, func(tx *bolt.Tx) error {
		b := tx.Bucket(bucket)
		if !bytes.Equal(b.Get([]byte(name)), old) {
			return errConflict
		}
		return b.Put([]byte(name), enc)
	})
	if err != nil {
		err = fmt.Errorf("vault: writing %q: %w", name, err)
		v.recordFailure(ctx, ev, err)
		return Meta{}, err
	}
	return rec.meta(name), nil
}

// recordFailure appends a failure event after a success event whose action
// then failed. Its own error is only logged: the operation already failed.
func (v *Vault) recordFailure(ctx context.Context, ev *audit.Event, err error) {
	f := *ev
	f.Seq, f.Time = 0, time.Time{}
	f.Outcome, f.Severity, f.Reason = audit.OutcomeFailure, audit.SeverityWarn, err.Error()
	_ = v.appendEvent(ctx, &f)
}

// seal encrypts plain under t as version n of name.
func seal(t *term, ns byte, name string, typ Type, n uint64, plain []byte, now time.Time) (version, error) {
	ver := version{n: n, term: t.id, created: now.UnixNano()}
	if _, err := io.ReadFull(rand.Reader, ver.nonce[:]); err != nil {
		return version{}, fmt.Errorf("vault: generating a nonce: %w", err)
	}
	var buf [256]byte
	aad := secretAAD(buf[:0], ns, name, typ, n, t.id)
	ver.ct = t.aead.Seal(make([]byte, 0, len(plain)+tagSize), ver.nonce[:], plain, aad)
	return ver, nil
}

// openVersion decrypts one version into new memory.
func openVersion(kr *keyring, ns byte, name string, typ Type, ver *version) ([]byte, error) {
	t := kr.terms[ver.term]
	if t == nil {
		return nil, fmt.Errorf("vault: %w: %q version %d names keyring term %d, which does not exist", ErrCorrupt, name, ver.n, ver.term)
	}
	var buf [256]byte
	aad := secretAAD(buf[:0], ns, name, typ, ver.n, ver.term)
	plain, err := t.aead.Open(make([]byte, 0, len(ver.ct)-tagSize), ver.nonce[:], ver.ct, aad)
	if err != nil {
		return nil, fmt.Errorf("vault: %w: %q version %d does not authenticate (damaged or moved)", ErrCorrupt, name, ver.n)
	}
	return plain, nil
}

// Describe returns the metadata of one secret. It is not audited: it is
// what the verbs use to look a secret up; List is the audited listing.
func (v *Vault) Describe(ctx context.Context, name string) (Meta, error) {
	if err := v.rlock(); err != nil {
		return Meta{}, fmt.Errorf("vault: %w", err)
	}
	defer v.mu.RUnlock()
	var m Meta
	err := v.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketSecrets).Get([]byte(name))
		if raw == nil {
			return fmt.Errorf("vault: %w: %q", ErrNotFound, name)
		}
		r, err := checkedRecord(v.kr, nsSecret, name, raw)
		if err != nil {
			return err
		}
		m = r.meta(name)
		return nil
	})
	return m, err
}

// List returns every secret's metadata, sorted by name. It never returns a
// value or a system key. A secret whose record is refused (its MAC does not
// check, or it does not decode) is listed by name with Meta.Refused saying
// why, and nothing else of it: the others are listed all the same, so the
// admin sees which to delete or restore.
func (v *Vault) List(ctx context.Context, who audit.Actor) ([]Meta, error) {
	ev := &audit.Event{Type: "admin.call", Actor: who, Action: "secret.list", Source: "unix"}
	if err := v.rlock(); err != nil {
		return nil, v.refuse(ctx, ev, fmt.Errorf("vault: %w", err))
	}
	out := []Meta{}
	refused := 0
	err := v.db.View(func(tx *bolt.Tx) error {
		return tx.Bucket(bucketSecrets).ForEach(func(k, raw []byte) error {
			r, err := checkedRecord(v.kr, nsSecret, string(k), raw)
			if err != nil {
				out = append(out, Meta{Name: string(k), Refused: refusal(err)})
				refused++
				return nil
			}
			out = append(out, r.meta(string(k)))
			return nil
		})
	})
	v.mu.RUnlock()
	if err != nil {
		return nil, v.refuse(ctx, ev, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	ev.Details = map[string]string{"count": strconv.Itoa(len(out))}
	if refused > 0 {
		ev.Details["refused"] = strconv.Itoa(refused)
	}
	if err := v.appendEvent(ctx, ev); err != nil {
		return nil, err
	}
	return out, nil
}

// Delete removes a secret and every version of it.
func (v *Vault) Delete(ctx context.Context, who audit.Actor, name string) error {
	ev := &audit.Event{Type: "secret.delete", Actor: who, Action: "secret.delete", Target: name, Source: "unix",
		Severity: audit.SeverityWarn}
	if err := checkName(name); err != nil {
		return v.refuse(ctx, ev, fmt.Errorf("vault: %w: %w", ErrInvalid, err))
	}
	l := v.nameLock(nsSecret, name)
	l.Lock()
	defer l.Unlock()
	if err := v.rlock(); err != nil {
		return v.refuse(ctx, ev, fmt.Errorf("vault: %w", err))
	}
	defer v.mu.RUnlock()
	var cur uint64
	err := v.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucketSecrets).Get([]byte(name))
		if raw == nil {
			return fmt.Errorf("vault: %w: %q", ErrNotFound, name)
		}
		// A record that fails its check can still be deleted (that is
		// the way out); its version is then not trusted for the event.
		if r, err := checkedRecord(v.kr, nsSecret, name, raw); err == nil {
			cur = r.current().n
		}
		return nil
	})
	if err != nil {
		return v.refuse(ctx, ev, err)
	}
	ev.Outcome = audit.OutcomeSuccess
	ev.Details = map[string]string{"version": strconv.FormatUint(cur, 10)}
	if err := v.appendEvent(ctx, ev); err != nil {
		return err
	}
	err = v.write(v.db, func(tx *bolt.Tx) error { return tx.Bucket(bucketSecrets).Delete([]byte(name)) })
	if err != nil {
		err = fmt.Errorf("vault: deleting %q: %w", name, err)
		v.recordFailure(ctx, ev, err)
		return err
	}
	return nil
}

// Verify reports whether candidate equals the current value of the secret,
// in time that does not depend on where they differ (both sides are hashed
// with SHA-256 and the digests compared in constant time). A structured
// candidate is compared by content, not by its JSON spelling.
func (v *Vault) Verify(ctx context.Context, who audit.Actor, name string, candidate []byte) (bool, error) {
	ev := &audit.Event{Type: "secret.verify", Actor: who, Action: "secret.verify", Target: name, Source: "unix"}
	if err := checkName(name); err != nil {
		return false, v.refuse(ctx, ev, fmt.Errorf("vault: %w: %w", ErrInvalid, err))
	}
	val, err := v.current(ctx, nsSecret, bucketSecrets, name, nil)
	if err != nil {
		return false, v.refuse(ctx, ev, err)
	}
	defer val.zero()
	cand, err := normalize(val.Type, candidate)
	if err != nil {
		return false, v.refuse(ctx, ev, err)
	}
	a, b := sha256.Sum256(val.b), sha256.Sum256(cand)
	clear(cand)
	match := subtle.ConstantTimeCompare(a[:], b[:]) == 1
	ev.Outcome = audit.OutcomeSuccess
	ev.Details = map[string]string{"version": strconv.FormatUint(val.Version, 10), "match": strconv.FormatBool(match)}
	if err := v.appendEvent(ctx, ev); err != nil {
		return false, err
	}
	return match, nil
}

// ForTool returns the current value of the secret name for the [[tool]]
// entry tool, in the form its type hands out (see Type). It is denied
// (ErrDenied, and audited) unless tool is in the secret's allowed_tools. A
// granted fetch is not audited here: the broker's event for the tool call
// names the secret. The result is a fresh copy; the caller clears it as soon
// as it has used it.
func (v *Vault) ForTool(ctx context.Context, tool, name string) ([]byte, error) {
	val, err := v.current(ctx, nsSecret, bucketSecrets, name, &tool)
	if err != nil {
		ev := &audit.Event{Type: "secret.use", Severity: audit.SeverityWarn, Action: "secret.use", Target: name,
			Details: map[string]string{"tool": tool}}
		return nil, v.refuse(ctx, ev, err)
	}
	return val.b, nil
}

// ForInternal returns the current value of the secret name (a fresh copy,
// in the form ForTool hands out) for one of the
// appliance's own components (user labels it, e.g. "ldapauth" for the LDAP
// bind password named by [ldap] bind_password_secret). allowed_tools does
// not apply. Failures are audited; a granted fetch is not (the component's
// own event records the use).
func (v *Vault) ForInternal(ctx context.Context, user, name string) ([]byte, error) {
	var err error
	var val value
	if user == "" {
		err = fmt.Errorf("vault: %w: ForInternal needs a caller label", ErrInvalid)
	} else {
		val, err = v.current(ctx, nsSecret, bucketSecrets, name, nil)
	}
	if err != nil {
		ev := &audit.Event{Type: "secret.use", Severity: audit.SeverityWarn, Action: "secret.use", Target: name,
			Details: map[string]string{"internal": user}}
		return nil, v.refuse(ctx, ev, err)
	}
	return val.b, nil
}

// current decrypts the newest version of name. The record's MAC is checked
// before anything in it is used; when tool is not nil the record must then
// allow it.
func (v *Vault) current(ctx context.Context, ns byte, bucket []byte, name string, tool *string) (value, error) {
	if err := checkName(name); err != nil {
		return value{}, fmt.Errorf("vault: %w: %w", ErrInvalid, err)
	}
	if tool != nil {
		if err := checkName(*tool); err != nil {
			return value{}, fmt.Errorf("vault: %w: tool: %w", ErrInvalid, err)
		}
	}
	if err := v.rlock(); err != nil {
		return value{}, fmt.Errorf("vault: %w", err)
	}
	defer v.mu.RUnlock()
	var val value
	err := v.db.View(func(tx *bolt.Tx) error {
		raw := tx.Bucket(bucket).Get([]byte(name))
		if raw == nil {
			return fmt.Errorf("vault: %w: %q", ErrNotFound, name)
		}
		r, err := checkedRecord(v.kr, ns, name, raw)
		if err != nil {
			return err
		}
		if tool != nil && !r.allows(*tool) {
			return fmt.Errorf("vault: %w: tool %q may not use %q", ErrDenied, *tool, name)
		}
		cur := r.current()
		plain, err := openVersion(v.kr, ns, name, r.typ, cur)
		if err != nil {
			return err
		}
		val = value{Name: name, Type: r.typ, Version: cur.n, b: plain}
		return nil
	})
	return val, err
}
