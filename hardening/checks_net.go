package hardening

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"net/url"
	"os"
	"syscall"
	"time"

	"github.com/go-ldap/ldap/v3"
)

// DefaultEgressProbe is the address the egress probe tries: TEST-NET-1
// (RFC 5737), which no allow list has a reason to open.
var DefaultEgressProbe = netip.MustParseAddrPort("192.0.2.1:443")

// EgressProbeCheck sends one UDP datagram from this host to target, an
// address the egress allow list does not open. The local firewall should
// drop it on the way out, which the kernel reports at once as EPERM; a
// datagram that leaves the host means egress is not default-deny. UDP is
// used because a dropped TCP SYN is retried silently until a timeout, while
// a dropped datagram is refused at the send.
func EgressProbeCheck(target netip.AddrPort) Check {
	return Check{Name: "egress probe", Run: func(ctx context.Context) []Result {
		return []Result{egressProbe(ctx, target)}
	}}
}

func egressProbe(ctx context.Context, target netip.AddrPort) Result {
	name := "egress probe " + target.String()
	var d net.Dialer
	c, err := d.DialContext(ctx, "udp", target.String())
	if err == nil {
		_, err = c.Write([]byte("applianced doctor egress probe\n"))
		c.Close()
	}
	switch {
	case err == nil:
		return Result{Name: name, Status: Fail, Detail: "a UDP datagram to a non-allowed address left this host: egress is not blocked",
			Fix: "apply the firewall: `applianced net plan`, then `applianced net apply` and `applianced net confirm`"}
	case errors.Is(err, syscall.EPERM), errors.Is(err, syscall.EACCES):
		return Result{Name: name, Status: Pass, Detail: "refused by the local firewall (" + errnoText(err) + ")"}
	case errors.Is(err, syscall.ENETUNREACH), errors.Is(err, syscall.EHOSTUNREACH):
		// The firewall was never asked: this proves nothing about it.
		return Result{Name: name, Status: Skip, Detail: "no route to it from this host (" + errnoText(err) + "): the probe cannot tell whether the firewall would stop it; see the firewall check"}
	}
	return Result{Name: name, Status: Warn, Detail: "probe failed: " + err.Error(), Fix: "check `applianced net status`"}
}

func errnoText(err error) string {
	var en syscall.Errno
	if errors.As(err, &en) {
		return en.Error()
	}
	return err.Error()
}

// DCConfig is what DCCheck needs of the [ldap] section.
type DCConfig struct {
	URLs              []string
	StartTLS          bool
	CAFile            string
	ServerName        string
	InsecurePlaintext bool
	// DialTimeout bounds each connection; zero means 5 s.
	DialTimeout time.Duration
	// ExpiryWarning: a certificate expiring sooner warns; zero means 30 days.
	ExpiryWarning time.Duration
}

// DCCheck connects to each domain controller, completes TLS (LDAPS or
// StartTLS) against the configured CA and reports the certificate's expiry.
// It never binds: no credential is sent.
func DCCheck(cfg DCConfig) Check {
	return Check{Name: "domain controllers", Run: func(ctx context.Context) []Result {
		if len(cfg.URLs) == 0 {
			return []Result{{Name: "dc", Status: Skip, Detail: "no [ldap] urls configured"}}
		}
		var pool *x509.CertPool
		if cfg.CAFile != "" {
			pem, err := os.ReadFile(cfg.CAFile)
			if err != nil {
				return []Result{{Name: "dc ca_file", Status: Fail, Detail: err.Error(), Fix: "put the AD CA certificate at [ldap] ca_file"}}
			}
			pool = x509.NewCertPool()
			if !pool.AppendCertsFromPEM(pem) {
				return []Result{{Name: "dc ca_file", Status: Fail, Detail: cfg.CAFile + " holds no PEM certificate",
					Fix: "put the AD CA certificate (PEM) at [ldap] ca_file"}}
			}
		}
		var out []Result
		for _, u := range cfg.URLs {
			out = append(out, probeDC(ctx, cfg, pool, u))
		}
		return out
	}}
}

func probeDC(ctx context.Context, cfg DCConfig, pool *x509.CertPool, raw string) Result {
	name := "dc " + raw
	timeout := cfg.DialTimeout
	if timeout <= 0 {
		timeout = 5 * time.Second
	}
	warnBefore := cfg.ExpiryWarning
	if warnBefore <= 0 {
		warnBefore = 30 * 24 * time.Hour
	}
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return Result{Name: name, Status: Fail, Detail: "not a URL", Fix: "write [ldap] urls as ldaps://host:636"}
	}
	serverName := cfg.ServerName
	if serverName == "" {
		serverName = u.Hostname()
	}
	tcfg := &tls.Config{RootCAs: pool, ServerName: serverName, MinVersion: tls.VersionTLS12}
	dialer := &net.Dialer{Timeout: timeout}
	var state tls.ConnectionState
	switch {
	case u.Scheme == "ldaps":
		host := u.Host
		if u.Port() == "" {
			host = net.JoinHostPort(u.Hostname(), "636")
		}
		c, err := (&tls.Dialer{NetDialer: dialer, Config: tcfg}).DialContext(ctx, "tcp", host)
		if err != nil {
			return dcError(name, err)
		}
		state = c.(*tls.Conn).ConnectionState()
		c.Close()
	case u.Scheme == "ldap" && cfg.StartTLS:
		conn, err := ldap.DialURL(raw, ldap.DialWithDialer(dialer))
		if err != nil {
			return dcError(name, err)
		}
		defer conn.Close()
		conn.SetTimeout(timeout)
		if err := conn.StartTLS(tcfg); err != nil {
			return dcError(name, err)
		}
		var ok bool
		if state, ok = conn.TLSConnectionState(); !ok {
			return Result{Name: name, Status: Fail, Detail: "StartTLS completed without a TLS state", Fix: "check the DC's LDAP TLS settings"}
		}
	case u.Scheme == "ldap" && cfg.InsecurePlaintext:
		c, err := dialer.DialContext(ctx, "tcp", u.Host)
		if err != nil {
			return dcError(name, err)
		}
		c.Close()
		return Result{Name: name, Status: Warn, Detail: "reachable over plaintext LDAP (insecure_plaintext = true)",
			Fix: "use ldaps:// or start_tls = true and remove insecure_plaintext"}
	default:
		return Result{Name: name, Status: Fail, Detail: "plain ldap:// without start_tls", Fix: "use ldaps:// or set start_tls = true"}
	}
	if len(state.PeerCertificates) == 0 {
		return Result{Name: name, Status: Fail, Detail: "no certificate presented", Fix: "install a certificate on the DC"}
	}
	leaf := state.PeerCertificates[0]
	left := time.Until(leaf.NotAfter)
	d := fmt.Sprintf("reachable, certificate for %s valid until %s (%d days)", serverName, leaf.NotAfter.UTC().Format(time.DateOnly), int(left.Hours()/24))
	if left < warnBefore {
		return Result{Name: name, Status: Warn, Detail: d, Fix: "renew the DC's certificate before it expires"}
	}
	return Result{Name: name, Status: Pass, Detail: d}
}

func dcError(name string, err error) Result {
	var uae x509.UnknownAuthorityError
	var cie x509.CertificateInvalidError
	var hne x509.HostnameError
	switch {
	case errors.As(err, &cie) && cie.Reason == x509.Expired:
		return Result{Name: name, Status: Fail, Detail: "certificate expired or not yet valid: " + err.Error(), Fix: "renew the DC's certificate; check this host's clock"}
	case errors.As(err, &uae), errors.As(err, &cie):
		return Result{Name: name, Status: Fail, Detail: "certificate not trusted: " + err.Error(), Fix: "put the CA that issued the DC's certificate at [ldap] ca_file"}
	case errors.As(err, &hne):
		return Result{Name: name, Status: Fail, Detail: "certificate name mismatch: " + err.Error(), Fix: "use the name on the certificate in [ldap] urls or set server_name"}
	}
	return Result{Name: name, Status: Fail, Detail: "unreachable: " + err.Error(),
		Fix: "check the [[net.egress]] rule for the DCs and the DC's LDAPS port"}
}
