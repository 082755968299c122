// Package config loads /etc/applianced/applianced.toml: one strict TOML file
// composed of the sections the domain packages declare.
//
// Strict means: an unknown key, a value of the wrong type and a value that a
// section's Validate rejects are all errors, each naming the file, the line
// and the key; Load reports every error it finds, not only the first. A file
// with any error is rejected whole: the caller keeps what it had.
//
// The package refuses secret values: the file names vault secrets, it never
// holds them.
package config

import (
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"path/filepath"
	"regexp"
	"sort"
	"strconv"
	"strings"

	toml "github.com/pelletier/go-toml/v2"

	"github.com/applianced/applianced/broker"
	"github.com/applianced/applianced/broker/dlp"
	"github.com/applianced/applianced/broker/toolproxy"
	"github.com/applianced/applianced/internal/conf"
	"github.com/applianced/applianced/ldapauth"
	"github.com/applianced/applianced/netseg"
	"github.com/applianced/applianced/syslog"
	"github.com/applianced/applianced/vault"
)

// DefaultPath is where the package installs the config.
const DefaultPath = "/etc/applianced/applianced.toml"

// File is the whole config file.
type File struct {
	Server   Server               `toml:"server"`
	LDAP     *ldapauth.Config     `toml:"ldap"` // nil: no directory configured
	Vault    vault.Config         `toml:"vault"`
	Tokens   broker.TokenConfig   `toml:"tokens"`
	Roles    []broker.Role        `toml:"role"`
	Agents   []broker.Agent       `toml:"agent"`
	Policies []broker.Policy      `toml:"policy"`
	Tools    []toolproxy.Tool     `toml:"tool"`
	Risk     toolproxy.RiskConfig `toml:"risk"`
	DLP      dlp.Config           `toml:"dlp"`
	Audit    Audit                `toml:"audit"`
	Net      netseg.Config        `toml:"net"`

	// Path is the file this was loaded from.
	Path string `toml:"-"`
}

// Server is the [server] section: where the daemon listens and keeps state.
type Server struct {
	// Listen is the HTTPS API address (host:port) for chatbot backends and
	// remote agents. Default "127.0.0.1:8443".
	Listen string `toml:"listen"`
	// StateDir holds the vault database, the audit journal and runtime
	// state. Default /var/lib/applianced.
	StateDir string `toml:"state_dir"`
	// AdminSocket is the admin CLI's Unix socket. Default
	// /run/applianced/admin.sock.
	AdminSocket string `toml:"admin_socket"`
	// AdminGroup may use the admin socket (root always may). Default
	// "applianced-admin".
	AdminGroup string `toml:"admin_group"`
	// AgentSocket is the local agents' Unix socket; their identity is the
	// kernel's peer credentials. Default /run/applianced/agent.sock.
	AgentSocket string `toml:"agent_socket"`
	// TLSCert and TLSKey are the API's certificate and key (PEM). `applianced
	// init` makes a self-signed pair when they are absent. The key file must
	// not be readable by group or others.
	TLSCert string `toml:"tls_cert"`
	TLSKey  string `toml:"tls_key"`
	// LogLevel is debug, info, warn or error. Default info.
	LogLevel string `toml:"log_level"`
	// ShutdownTimeout bounds the drain of in-flight requests on stop.
	// Default 10s.
	ShutdownTimeout conf.Duration `toml:"shutdown_timeout"`
}

// Audit is the [audit] section: the local journal and its forwarders.
type Audit struct {
	// SegmentBytes is the journal segment size. Default 64MB.
	SegmentBytes conf.ByteSize `toml:"segment_bytes"`
	// MaxBytes bounds the journal on disk, the zeros it keeps written
	// ahead of its newest entry included; 0 means the file system does.
	MaxBytes conf.ByteSize `toml:"max_bytes"`
	// Retain is how long delivered segments are kept. Default 90d.
	Retain conf.Duration `toml:"retain"`
	// DiskFull is "block" (new actions fail; the default) or "drop_oldest".
	DiskFull string `toml:"disk_full"`
	// CheckpointEvery and CheckpointInterval say how often a signed
	// checkpoint goes into the journal: every N events or T, whichever first.
	CheckpointEvery    int           `toml:"checkpoint_every"`
	CheckpointInterval conf.Duration `toml:"checkpoint_interval"`
	// Syslog lists the forwarding targets, [[audit.syslog]].
	Syslog []syslog.Target `toml:"syslog"`
}

// Problem is one error in the file.
type Problem struct {
	File string
	Line int // 0 when the key is absent from the file (a missing value)
	Key  string
	Msg  string
}

func (p Problem) String() string {
	loc := p.File
	if p.Line > 0 {
		loc = fmt.Sprintf("%s:%d", p.File, p.Line)
	}
	if p.Key == "" {
		return loc + ": " + p.Msg
	}
	return fmt.Sprintf("%s: %s: %s", loc, p.Key, p.Msg)
}

// Error is every problem Load found.
type Error struct{ Problems []Problem }

func (e *Error) Error() string {
	lines := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		lines[i] = p.String()
	}
	return strings.Join(lines, "\n")
}

// ErrInvalid is matched by errors.Is for any *Error.
var ErrInvalid = errors.New("config: invalid")

// Is makes errors.Is(err, ErrInvalid) true for an *Error.
func (e *Error) Is(target error) bool { return target == ErrInvalid }

// Load reads, decodes and validates the file at path. On any problem it
// returns a nil *File and an *Error listing all of them.
func Load(path string) (*File, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, &Error{Problems: []Problem{{File: path, Msg: "cannot read the config file: " + errText(err)}}}
	}
	return Parse(path, data)
}

// Parse is Load for bytes already read; path is used in messages.
func Parse(path string, data []byte) (*File, error) {
	idx, perr := indexKeys(data)
	if perr != nil {
		return nil, &Error{Problems: []Problem{{File: path, Line: perr.line, Msg: "TOML syntax error: " + perr.msg}}}
	}
	var probs []Problem
	decodeFailed := map[string]bool{}
	doc := append([]byte(nil), data...)
	var f File
	for attempt := 0; ; attempt++ {
		f = File{}
		dec := toml.NewDecoder(strings.NewReader(string(doc)))
		dec.DisallowUnknownFields()
		dec.EnableUnmarshalerInterface() // conf.Duration refuses a bare number
		err := dec.Decode(&f)
		if err == nil {
			break
		}
		var sm *toml.StrictMissingError
		if errors.As(err, &sm) {
			for _, de := range sm.Errors {
				line, _ := de.Position()
				key := strings.Join(de.Key(), ".")
				at := idx.pathAt(line, key)
				msg := "unknown key (check its spelling and section)"
				if name := de.Key()[len(de.Key())-1]; !strings.HasSuffix(at, name) {
					// Inside an inline table: the expression is the table.
					msg = fmt.Sprintf("unknown key %q in this table (check its spelling)", name)
				}
				probs = append(probs, Problem{File: path, Line: line, Key: at, Msg: msg})
				decodeFailed[at] = true
			}
			// Decode again without them to validate the rest.
			for _, de := range sm.Errors {
				line, _ := de.Position()
				doc = blankExpression(doc, idx, line)
			}
			if attempt < 200 {
				continue
			}
			break
		}
		var de *toml.DecodeError
		if errors.As(err, &de) && attempt < 200 {
			line, _ := de.Position()
			key := idx.pathAt(line, strings.Join(de.Key(), "."))
			probs = append(probs, Problem{File: path, Line: line, Key: key, Msg: decodeMsg(de)})
			decodeFailed[key] = true
			doc = blankExpression(doc, idx, line)
			continue
		}
		var ve *conf.ValueError
		if errors.As(err, &ve) && attempt < 200 {
			if line := idx.lineOfValue(doc, ve.Value); line > 0 {
				key := idx.pathAt(line, "")
				probs = append(probs, Problem{File: path, Line: line, Key: key, Msg: ve.Error()})
				decodeFailed[key] = true
				doc = blankExpression(doc, idx, line)
				continue
			}
		}
		probs = append(probs, Problem{File: path, Msg: err.Error()})
		return nil, &Error{Problems: probs}
	}
	f.Path = path
	f.applyDefaults()
	for _, fe := range f.validate() {
		if reportedAbove(decodeFailed, fe.Key) {
			continue // already reported as a wrong value or an unknown key
		}
		probs = append(probs, Problem{File: path, Line: idx.lineOf(fe.Key), Key: fe.Key, Msg: fe.Msg})
	}
	if len(probs) > 0 {
		sort.SliceStable(probs, func(a, b int) bool {
			if probs[a].Line == 0 || probs[b].Line == 0 {
				return probs[a].Line != 0 && probs[b].Line == 0
			}
			return probs[a].Line < probs[b].Line
		})
		return nil, &Error{Problems: probs}
	}
	return &f, nil
}

// reportedAbove says whether key, or a table holding it, was dropped from
// the document for a problem already reported: what validation says of it
// then is a consequence, not news.
func reportedAbove(failed map[string]bool, key string) bool {
	for k := key; k != ""; {
		if failed[k] {
			return true
		}
		i := strings.LastIndexAny(k, ".[")
		if i < 0 {
			break
		}
		k = k[:i]
	}
	return false
}

// decodeMsg says what is wrong with a value of the wrong type in words a
// sysadmin can act on, not in Go's types.
func decodeMsg(de *toml.DecodeError) string {
	msg := strings.TrimPrefix(de.Error(), "toml: ")
	m := wrongTypeRE.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	got, want := m[1], m[2]
	switch got {
	case "string":
		got = "a string"
	case "integer":
		got = "a number"
	case "boolean":
		got = "true/false"
	case "array":
		got = "a list"
	case "table", "inline table":
		got = "a table"
	default:
		got = "a " + got
	}
	return "wrong type: " + got + " where " + wantText(want) + " belongs"
}

var wrongTypeRE = regexp.MustCompile(`cannot (?:decode|store) TOML (\w+(?: \w+)?)(?: \(.*?\))? into (?:struct field \S+ of )?(?:a Go )?(?:type )?(\S+)`)

func wantText(goType string) string {
	switch {
	case goType == "[]string":
		return `a list of strings, like ["a", "b"],`
	case strings.HasPrefix(goType, "[]int"):
		return "a list of numbers, like [22, 443],"
	case strings.HasPrefix(goType, "[]"):
		return "a list"
	case goType == "string":
		return `a string in quotes`
	case strings.Contains(goType, "int"):
		return "a whole number"
	case strings.Contains(goType, "float"):
		return "a number"
	case goType == "bool":
		return "true or false"
	case strings.HasSuffix(goType, "Duration"):
		return `a duration in quotes, like "5m",`
	case strings.HasSuffix(goType, "ByteSize"):
		return `a size, like "64MB",`
	case strings.HasPrefix(goType, "map["):
		return "a table"
	}
	return "a value of another kind"
}

func errText(err error) string {
	var pe *os.PathError
	if errors.As(err, &pe) {
		return pe.Err.Error()
	}
	return err.Error()
}

func (f *File) applyDefaults() {
	s := &f.Server
	def := func(p *string, v string) {
		if *p == "" {
			*p = v
		}
	}
	def(&s.Listen, "127.0.0.1:8443")
	def(&s.StateDir, DefaultStateDir)
	def(&s.AdminSocket, "/run/applianced/admin.sock")
	def(&s.AdminGroup, "applianced-admin")
	def(&s.AgentSocket, "/run/applianced/agent.sock")
	def(&s.TLSCert, "/etc/applianced/tls/api.pem")
	def(&s.TLSKey, "/etc/applianced/tls/api.key")
	def(&s.LogLevel, "info")
	if s.ShutdownTimeout == 0 {
		s.ShutdownTimeout = conf.Duration(10e9)
	}
	a := &f.Audit
	if a.SegmentBytes == 0 {
		a.SegmentBytes = 64 << 20
	}
	if a.Retain == 0 {
		a.Retain = conf.Duration(90 * 24 * 3600e9)
	}
	def(&a.DiskFull, "block")
	if a.CheckpointEvery == 0 {
		a.CheckpointEvery = 1000
	}
	if a.CheckpointInterval == 0 {
		a.CheckpointInterval = conf.Duration(60e9)
	}
}

type validator interface{ Validate() []*conf.FieldError }

// validate runs the file's own checks and each section's Validate.
func (f *File) validate() []*conf.FieldError {
	var errs []*conf.FieldError
	errs = append(errs, conf.Join("server", f.Server.validate())...)
	errs = append(errs, conf.Join("audit", f.Audit.validate())...)
	section := func(name string, v any) {
		if val, ok := v.(validator); ok {
			errs = append(errs, conf.Join(name, val.Validate())...)
		}
	}
	if f.LDAP != nil {
		section("ldap", f.LDAP)
	}
	section("vault", &f.Vault)
	section("tokens", &f.Tokens)
	section("risk", &f.Risk)
	section("dlp", &f.DLP)
	section("net", &f.Net)
	for i := range f.Roles {
		section(fmt.Sprintf("role[%d]", i), &f.Roles[i])
	}
	for i := range f.Agents {
		section(fmt.Sprintf("agent[%d]", i), &f.Agents[i])
	}
	for i := range f.Policies {
		section(fmt.Sprintf("policy[%d]", i), &f.Policies[i])
	}
	for i := range f.Tools {
		section(fmt.Sprintf("tool[%d]", i), &f.Tools[i])
	}
	for i := range f.Audit.Syslog {
		section(fmt.Sprintf("audit.syslog[%d]", i), &f.Audit.Syslog[i])
	}
	errs = append(errs, uniqueNames("role", len(f.Roles), func(i int) string { return f.Roles[i].Name })...)
	errs = append(errs, uniqueNames("agent", len(f.Agents), func(i int) string { return f.Agents[i].Name })...)
	errs = append(errs, uniqueNames("policy", len(f.Policies), func(i int) string { return f.Policies[i].Name })...)
	errs = append(errs, uniqueNames("tool", len(f.Tools), func(i int) string { return f.Tools[i].Name })...)
	errs = append(errs, f.crossRefs()...)
	return errs
}

// crossRefs checks names that one section gives and another uses.
func (f *File) crossRefs() []*conf.FieldError {
	var errs []*conf.FieldError
	roles := map[string]bool{}
	for _, r := range f.Roles {
		roles[r.Name] = true
	}
	for i, a := range f.Agents {
		for k, r := range a.Roles {
			if !roles[r] {
				errs = append(errs, conf.Errf(fmt.Sprintf("agent[%d].roles[%d]", i, k), "unknown role %q: define it in a [[role]] section", r))
			}
		}
	}
	if f.LDAP != nil {
		for g, rs := range f.LDAP.GroupRoles {
			for _, r := range rs {
				if !roles[r] {
					errs = append(errs, conf.Errf("ldap.group_roles."+g, "unknown role %q: define it in a [[role]] section", r))
				}
			}
		}
	}
	agents := map[string]bool{}
	for _, a := range f.Agents {
		agents[a.Name] = true
	}
	for i, p := range f.Policies {
		for k, a := range p.Agents {
			if !agents[a] {
				errs = append(errs, conf.Errf(fmt.Sprintf("policy[%d].agents[%d]", i, k), "unknown agent %q", a))
			}
		}
	}
	return errs
}

func uniqueNames(kind string, n int, name func(int) string) []*conf.FieldError {
	var errs []*conf.FieldError
	seen := map[string]int{}
	for i := 0; i < n; i++ {
		nm := name(i)
		if nm == "" {
			errs = append(errs, conf.Errf(fmt.Sprintf("%s[%d]", kind, i), "missing name: every [[%s]] needs name = \"...\"", kind))
			continue
		}
		if j, dup := seen[nm]; dup {
			errs = append(errs, conf.Errf(fmt.Sprintf("%s[%d].name", kind, i), "duplicate name %q (also [[%s]] number %d)", nm, kind, j+1))
			continue
		}
		seen[nm] = i
	}
	return errs
}

func (s *Server) validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if _, port, err := net.SplitHostPort(s.Listen); err != nil || port == "" {
		errs = append(errs, conf.Errf("listen", "invalid address %q: want host:port, e.g. \"10.20.0.5:8443\"", s.Listen))
	} else if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		errs = append(errs, conf.Errf("listen", "invalid port %q in %q: want a number from 1 to 65535", port, s.Listen))
	}
	for key, p := range map[string]string{"state_dir": s.StateDir, "admin_socket": s.AdminSocket,
		"agent_socket": s.AgentSocket, "tls_cert": s.TLSCert, "tls_key": s.TLSKey} {
		if !filepath.IsAbs(p) {
			errs = append(errs, conf.Errf(key, "must be an absolute path, got %q", p))
		}
	}
	switch s.LogLevel {
	case "debug", "info", "warn", "error":
	default:
		errs = append(errs, conf.Errf("log_level", "unknown level %q: want debug, info, warn or error", s.LogLevel))
	}
	if s.AdminGroup == "" || strings.ContainsAny(s.AdminGroup, " :/\x00") {
		errs = append(errs, conf.Errf("admin_group", "invalid group name %q", s.AdminGroup))
	}
	return errs
}

func (a *Audit) validate() []*conf.FieldError {
	var errs []*conf.FieldError
	if a.SegmentBytes < 64<<10 {
		errs = append(errs, conf.Errf("segment_bytes", "too small (%d bytes): use at least 64KiB", a.SegmentBytes))
	}
	if a.MaxBytes != 0 && a.MaxBytes < 2*a.SegmentBytes {
		errs = append(errs, conf.Errf("max_bytes", "must be 0 (no limit) or at least twice segment_bytes"))
	}
	switch a.DiskFull {
	case "block", "drop_oldest":
	default:
		errs = append(errs, conf.Errf("disk_full", "unknown policy %q: want \"block\" or \"drop_oldest\"", a.DiskFull))
	}
	if a.CheckpointEvery < 0 {
		errs = append(errs, conf.Errf("checkpoint_every", "must be positive"))
	}
	return errs
}

// DefaultStateDir is [server] state_dir when the file names none.
const DefaultStateDir = "/var/lib/applianced"

// StateDir reads only [server] state_dir from the file at path (default
// when absent), leniently: `applianced net restore` at boot needs nothing
// else of a file that may have an error elsewhere.
func StateDir(path string) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", fmt.Errorf("config: cannot read %s: %s", path, errText(err))
	}
	var doc struct {
		Server struct {
			StateDir string `toml:"state_dir"`
		} `toml:"server"`
	}
	if err := toml.Unmarshal(data, &doc); err != nil || doc.Server.StateDir == "" {
		return DefaultStateDir, nil
	}
	return doc.Server.StateDir, nil
}

// AdminSocket reads only [server] admin_socket from the file at path
// (default when absent), leniently, so the admin CLI reaches a daemon still
// running on its previous config while the file on disk has an error
// elsewhere.
//
// A member of the admin group cannot read the file (it is the daemon's,
// 0640 root:applianced): then the default socket is tried, where the admin
// server checks the caller itself.
func AdminSocket(path string) (string, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrPermission) {
		return "/run/applianced/admin.sock", nil
	}
	if err != nil {
		return "", fmt.Errorf("config: cannot read %s: %s", path, errText(err))
	}
	var doc struct {
		Server struct {
			AdminSocket string `toml:"admin_socket"`
		} `toml:"server"`
	}
	if err := toml.Unmarshal(data, &doc); err != nil || doc.Server.AdminSocket == "" {
		return "/run/applianced/admin.sock", nil
	}
	return doc.Server.AdminSocket, nil
}
