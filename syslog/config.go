package syslog

import (
	"fmt"
	"net"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/applianced/applianced/internal/conf"
)

// Format names accepted in Target.Format.
const (
	FormatRFC5424 = "rfc5424" // RFC 5424 header, structured data under SDID, JSON body
	FormatRFC3164 = "rfc3164" // BSD header "applianced[pid]:", JSON body
	FormatWazuh   = "wazuh"   // BSD header "applianced:", one-line JSON body, 64 KiB limit
)

// Framing names accepted in Target.Framing (stream transports only).
const (
	FramingOctetCounting = "octet-counting" // "LEN SP MSG" (RFC 5425, RFC 6587 §3.4.1)
	FramingNewline       = "newline"        // "MSG LF" (RFC 6587 §3.4.2); what Wazuh's TCP input reads
)

// Oversize policies accepted in Target.Oversize.
const (
	OversizeSplit  = "split"  // send the event in numbered parts, each within max_message_bytes
	OversizeRefuse = "refuse" // send a stub naming seq, hash and size instead of the body
)

// Limits and defaults of a target.
const (
	// DefaultMaxMessageBytes is the message size limit for rfc5424 and
	// rfc3164 targets when the config names none: the size RFC 5425 says a
	// receiver should accept and rsyslog's default maxMessageSize.
	DefaultMaxMessageBytes = 8192
	// WazuhMaxMessageBytes is the default and the maximum for wazuh
	// targets: Wazuh's limit on one log line (OS_MAXSTR, 65,536 bytes, its
	// line feed and terminating NUL included) less room for the
	// "2:<source address>:" remoted puts in front of each message before
	// the analysis daemon sees it. A longer line is cut there, and the cut
	// JSON matches no rule.
	WazuhMaxMessageBytes = 65536 - 512
	// MinMaxMessageBytes is the smallest accepted max_message_bytes: a part
	// must hold its header, the seq and hashes, and some of the event.
	MinMaxMessageBytes = 1024
	// MaxMaxMessageBytes bounds max_message_bytes (the largest UDP payload).
	MaxMaxMessageBytes = 65507 * 16
	// DefaultFacility is the facility when the config names none.
	DefaultFacility = "authpriv"
)

// Target is one [[audit.syslog]] of applianced.toml: a receiver the audit
// journal is forwarded to.
//
//	[[audit.syslog]]
//	address = "tls://siem.corp.example:6514"
//	format = "rfc5424"
//	framing = "octet-counting"
//	ca_file = "/etc/applianced/siem-ca.pem"
//
//	[[audit.syslog]]
//	address = "tcp://wazuh.corp.example:514"
//	format = "wazuh"
//
//	[[audit.syslog]]
//	address = "relp+tls://rsyslog.corp.example:2514"
//	ca_file = "/etc/applianced/siem-ca.pem"
//
// Each target keeps its own durable cursor in the journal: what the
// receiver took is delivered; everything after it is sent again after a
// reconnect (at-least-once; a duplicate carries the same seq). Over RELP the
// receiving application acknowledges each message it processed. Over tcp://
// and tls:// only the receiver's kernel acknowledges: a message counts as
// taken once acknowledged while the receiver's window shows it reading,
// which a receiver that stops reading with little unread data does not
// reveal (see the package documentation). UDP is lossy by nature and only
// suits a receiver on the same host.
type Target struct {
	// Address is where to send: "udp://host:port", "tcp://host:port",
	// "tls://host:port" (6514 by convention), "relp://host:port" or
	// "relp+tls://host:port" (RELP, e.g. rsyslog's imrelp; 2514 by
	// convention) or "unix:///dev/log" (a datagram socket). Required. Each
	// target's address is unique.
	Address string `toml:"address"`

	// Format is "rfc5424" (the default), "rfc3164" or "wazuh". Every format
	// carries the entry's seq, chain hash, previous hash and the event's
	// canonical JSON, so that `applianced audit verify` can check a capture.
	Format string `toml:"format"`

	// Framing separates messages on tcp:// and tls://: "octet-counting"
	// (the default) or "newline" (the default, and the only choice, for
	// format = "wazuh"). Under newline framing no message contains
	// a line feed: control characters in structured-data values are written
	// as #ooo (octal), as rsyslog does on reception. Ignored for udp and unix.
	Framing string `toml:"framing"`

	// CAFile is the PEM bundle that verifies the receiver's certificate for
	// tls:// and relp+tls://. Empty means the system's roots.
	CAFile string `toml:"ca_file"`

	// CertFile and KeyFile are an optional PEM client certificate and key
	// for tls:// and relp+tls:// receivers that require mutual
	// authentication. Both or neither.
	CertFile string `toml:"cert_file"`
	KeyFile  string `toml:"key_file"`

	// ServerName is the name checked in the receiver's certificate. Empty
	// means the host of Address.
	ServerName string `toml:"server_name"`

	// Facility is the syslog facility: "kern", "user", "mail", "daemon",
	// "auth", "syslog", "lpr", "news", "uucp", "cron", "authpriv", "ftp",
	// "local0" … "local7". Empty means "authpriv".
	Facility string `toml:"facility"`

	// MaxMessageBytes is the largest message sent, framing excluded. 0
	// means 8192, or 65024 for wazuh (what fits Wazuh's line, also its
	// maximum).
	MaxMessageBytes int `toml:"max_message_bytes"`

	// Oversize says what happens to an event larger than MaxMessageBytes:
	// "split" (the default) sends it in numbered parts that `audit verify`
	// reassembles; "refuse" sends a stub with its seq, hash and size that
	// `audit verify` reports. An event is never truncated silently.
	Oversize string `toml:"oversize"`

	// Hostname is the HOSTNAME field. Empty means the machine's host name.
	Hostname string `toml:"hostname"`

	// Start says where a target that has never received anything begins:
	// "oldest" (the default) sends every entry the journal keeps; "now"
	// starts with the next entry, for a target that replaces another one
	// that had the history (a new address or transport for the same SIEM),
	// so that its correlation rules do not fire again on months of it.
	Start string `toml:"start"`
}

// Start positions.
const (
	StartOldest = "oldest"
	StartNow    = "now"
)

var facilities = map[string]int{
	"kern": 0, "user": 1, "mail": 2, "daemon": 3, "auth": 4, "syslog": 5, "lpr": 6, "news": 7,
	"uucp": 8, "cron": 9, "authpriv": 10, "ftp": 11,
	"local0": 16, "local1": 17, "local2": 18, "local3": 19,
	"local4": 20, "local5": 21, "local6": 22, "local7": 23,
}

// endpoint is a parsed Address.
type endpoint struct {
	scheme string // udp, tcp, tls, relp, relp+tls, unix
	addr   string // host:port, or a socket path
	host   string // host without port (all but unix)
}

// stream is a byte stream over TCP: every scheme but udp and unix.
func (e endpoint) stream() bool {
	return e.scheme == "tcp" || e.scheme == "tls" || e.relp()
}

// framed is a stream that takes the framing option: tcp and tls (RELP
// has its own framing).
func (e endpoint) framed() bool { return e.scheme == "tcp" || e.scheme == "tls" }

// relp is RELP, whose receiver acknowledges each message it processed.
func (e endpoint) relp() bool { return e.scheme == "relp" || e.scheme == "relp+tls" }

// tls runs over TLS.
func (e endpoint) tls() bool { return e.scheme == "tls" || e.scheme == "relp+tls" }

// parseAddress parses a target address into its scheme and dial address.
func parseAddress(s string) (endpoint, error) {
	if s == "" {
		return endpoint{}, fmt.Errorf("is required (udp://, tcp://, tls://, relp://, relp+tls://host:port or unix:///dev/log)")
	}
	u, err := url.Parse(s)
	if err != nil {
		return endpoint{}, fmt.Errorf("does not parse: %v", err)
	}
	switch u.Scheme {
	case "udp", "tcp", "tls", "relp", "relp+tls":
		if u.Path != "" || u.RawQuery != "" || u.Fragment != "" || u.User != nil || u.Opaque != "" {
			return endpoint{}, fmt.Errorf("%q: want %s://host:port and nothing more", s, u.Scheme)
		}
		host, port, err := net.SplitHostPort(u.Host)
		if err != nil {
			return endpoint{}, fmt.Errorf("%q: want %s://host:port: %v", s, u.Scheme, err)
		}
		if host == "" {
			return endpoint{}, fmt.Errorf("%q: the host is missing", s)
		}
		p, err := strconv.ParseUint(port, 10, 16)
		if err != nil || p == 0 {
			return endpoint{}, fmt.Errorf("%q: port %q is not a number from 1 to 65535", s, port)
		}
		return endpoint{scheme: u.Scheme, addr: u.Host, host: host}, nil
	case "unix":
		if u.Host != "" || u.Path == "" || !filepath.IsAbs(u.Path) {
			return endpoint{}, fmt.Errorf("%q: want unix:///absolute/path, e.g. unix:///dev/log", s)
		}
		return endpoint{scheme: "unix", addr: u.Path}, nil
	case "":
		return endpoint{}, fmt.Errorf("%q has no scheme: want udp://, tcp://, tls://, relp://, relp+tls:// or unix://", s)
	default:
		return endpoint{}, fmt.Errorf("%q: unknown scheme %q: want udp, tcp, tls, relp, relp+tls or unix", s, u.Scheme)
	}
}

// Validate reports every problem of the target, with keys relative to it.
func (t Target) Validate() []*conf.FieldError {
	var errs []*conf.FieldError
	ep, err := parseAddress(t.Address)
	if err != nil {
		errs = append(errs, conf.Errf("address", "%v", err))
	}
	switch t.Format {
	case "", FormatRFC5424, FormatRFC3164, FormatWazuh:
	default:
		errs = append(errs, conf.Errf("format", "unknown format %q: want rfc5424, rfc3164 or wazuh", t.Format))
	}
	switch t.Framing {
	case "", FramingOctetCounting, FramingNewline:
		if t.Framing != "" && err == nil && !ep.framed() {
			errs = append(errs, conf.Errf("framing", "applies to tcp:// and tls:// only, not %s:// (RELP frames each message itself)", ep.scheme))
		}
	default:
		errs = append(errs, conf.Errf("framing", "unknown framing %q: want octet-counting or newline", t.Framing))
	}
	if t.Format == FormatWazuh && t.Framing == FramingOctetCounting {
		// Wazuh's syslog input reads one message per line: octet-counted
		// frames hold none, and every event would be lost unseen.
		errs = append(errs, conf.Errf("framing", "octet-counting does not work with format = \"wazuh\": Wazuh reads one message per line; use framing = \"newline\" (the default for wazuh)"))
	}
	tlsKeys := t.CAFile != "" || t.CertFile != "" || t.KeyFile != "" || t.ServerName != ""
	if tlsKeys && err == nil && !ep.tls() {
		errs = append(errs, conf.Errf("address", "ca_file, cert_file, key_file and server_name need a tls:// or relp+tls:// address, got %s://", ep.scheme))
	}
	for _, f := range []struct {
		key, val string
		check    func(string) error
	}{{"ca_file", t.CAFile, func(p string) error { _, err := conf.CertPool(p); return err }},
		{"cert_file", t.CertFile, conf.CheckCertFile}, {"key_file", t.KeyFile, conf.CheckExists}} {
		switch {
		case f.val == "":
		case !filepath.IsAbs(f.val):
			errs = append(errs, conf.Errf(f.key, "must be an absolute path, got %q", f.val))
		default:
			if err := f.check(f.val); err != nil {
				errs = append(errs, conf.Errf(f.key, "%v", err))
			}
		}
	}
	if (t.CertFile == "") != (t.KeyFile == "") {
		errs = append(errs, conf.Errf("cert_file", "cert_file and key_file go together: set both or neither"))
	}
	if _, ok := facilities[t.Facility]; t.Facility != "" && !ok {
		errs = append(errs, conf.Errf("facility", "unknown facility %q: want one of auth, authpriv, daemon, user, local0 … local7 (or kern, mail, syslog, lpr, news, uucp, cron, ftp)", t.Facility))
	}
	maxBytes := MaxMaxMessageBytes
	if t.Format == FormatWazuh {
		maxBytes = WazuhMaxMessageBytes
	}
	if err == nil && ep.scheme == "udp" && maxBytes > 65507 {
		maxBytes = 65507
	}
	if t.MaxMessageBytes != 0 && (t.MaxMessageBytes < MinMaxMessageBytes || t.MaxMessageBytes > maxBytes) {
		errs = append(errs, conf.Errf("max_message_bytes", "must be between %d and %d for this target (0 means the default), got %d",
			MinMaxMessageBytes, maxBytes, t.MaxMessageBytes))
	}
	switch t.Oversize {
	case "", OversizeSplit, OversizeRefuse:
	default:
		errs = append(errs, conf.Errf("oversize", "unknown policy %q: want split or refuse", t.Oversize))
	}
	switch t.Start {
	case "", StartOldest, StartNow:
	default:
		errs = append(errs, conf.Errf("start", "unknown start %q: want oldest or now", t.Start))
	}
	if strings.ContainsFunc(t.Hostname, func(r rune) bool { return r <= ' ' || r >= 0x7f }) || len(t.Hostname) > 255 {
		errs = append(errs, conf.Errf("hostname", "must be printable ASCII without spaces, at most 255 bytes"))
	}
	return errs
}

// ValidateTargets validates every [[audit.syslog]] and checks that no two
// share an address (each address names one durable cursor). Keys are
// "[i].key".
func ValidateTargets(ts []Target) []*conf.FieldError {
	var errs []*conf.FieldError
	seen := map[string]int{}
	for i, t := range ts {
		prefix := fmt.Sprintf("[%d]", i)
		for _, e := range t.Validate() {
			e.Key = prefix + "." + e.Key
			errs = append(errs, e)
		}
		if j, dup := seen[t.Address]; dup && t.Address != "" {
			errs = append(errs, conf.Errf(prefix+".address", "same address as [%d]: each target needs its own", j))
		}
		seen[t.Address] = i
	}
	return errs
}

// withDefaults returns the target with every empty field set to its default.
func (t Target) withDefaults() Target {
	if t.Format == "" {
		t.Format = FormatRFC5424
	}
	if t.Framing == "" {
		t.Framing = FramingOctetCounting
		if t.Format == FormatWazuh {
			t.Framing = FramingNewline // Wazuh reads one message per line
		}
	}
	if t.Facility == "" {
		t.Facility = DefaultFacility
	}
	if t.MaxMessageBytes == 0 {
		t.MaxMessageBytes = DefaultMaxMessageBytes
		if t.Format == FormatWazuh {
			t.MaxMessageBytes = WazuhMaxMessageBytes
		}
	}
	if t.Oversize == "" {
		t.Oversize = OversizeSplit
	}
	return t
}
