//go:build linux

package hardening

import (
	"context"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"math/big"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/samba"
)

type egressOut struct {
	NoRoute, Open, Dropped, Rejected Result
	Err                              string
}

func init() {
	// In a fresh network namespace where 192.0.2.1 is a local address: the
	// probe's datagram goes out; then table inet applianced drops, then
	// rejects, traffic to it.
	children["egress"] = func() any {
		target := netip.MustParseAddrPort("192.0.2.1:443")
		var o egressOut
		// No route at all yet: the firewall is never asked.
		o.NoRoute = egressProbe(context.Background(), target)
		for _, args := range [][]string{{"link", "set", "lo", "up"}, {"addr", "add", "192.0.2.1/32", "dev", "lo"}} {
			if out, err := exec.Command("ip", args...).CombinedOutput(); err != nil {
				return egressOut{Err: "ip " + strings.Join(args, " ") + ": " + string(out)}
			}
		}
		ctx := context.Background()
		o.Open = egressProbe(ctx, target)
		nft := func(rules string) error {
			cmd := exec.Command("nft", "-f", "-")
			cmd.Stdin = strings.NewReader(rules)
			if out, err := cmd.CombinedOutput(); err != nil {
				return &exec.ExitError{Stderr: out}
			}
			return nil
		}
		if err := nft("table inet applianced {\n chain output {\n  type filter hook output priority 0; policy accept;\n  ip daddr 192.0.2.1 drop\n }\n}\n"); err != nil {
			return egressOut{Err: "nft: " + string(err.(*exec.ExitError).Stderr)}
		}
		o.Dropped = egressProbe(ctx, target)
		if err := nft("flush chain inet applianced output\nadd rule inet applianced output ip daddr 192.0.2.1 reject\n"); err != nil {
			return egressOut{Err: "nft: " + string(err.(*exec.ExitError).Stderr)}
		}
		o.Rejected = egressProbe(ctx, target)
		return o
	}
}

// TestEgressProbe sends a real connection out of a namespace of the test's
// own, with and without the table inet applianced blocking it.
func TestEgressProbe(t *testing.T) {
	requireRoot(t)
	if _, err := exec.LookPath("nft"); err != nil {
		t.Skip("skipped: nft (Debian nftables) not installed")
	}
	var out egressOut
	startChild(t, "egress", &syscall.SysProcAttr{Cloneflags: syscall.CLONE_NEWNET}, &out)
	if out.Err != "" {
		t.Fatal(out.Err)
	}
	for _, tc := range []struct {
		name       string
		got        Result
		want       Status
		wantDetail string
	}{
		{"no route", out.NoRoute, Skip, "cannot tell"},
		{"no firewall", out.Open, Fail, "left this host"},
		{"dropped", out.Dropped, Pass, "operation not permitted"},
		{"rejected", out.Rejected, Pass, "operation not permitted"},
	} {
		if tc.got.Status != tc.want || !strings.Contains(tc.got.Detail, tc.wantDetail) {
			t.Errorf("%s: got %+v, want %s with %q", tc.name, tc.got, tc.want, tc.wantDetail)
		}
	}
}

// certPair writes a CA and a server certificate for name valid until
// notAfter, returning the CA file and a tls.Certificate.
func certPair(t *testing.T, name string, notAfter time.Time) (string, tls.Certificate) {
	t.Helper()
	caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	caTmpl := &x509.Certificate{SerialNumber: big.NewInt(1), Subject: pkix.Name{CommonName: "test CA"},
		NotBefore: time.Now().Add(-time.Hour), NotAfter: time.Now().Add(10 * 365 * 24 * time.Hour),
		IsCA: true, BasicConstraintsValid: true, KeyUsage: x509.KeyUsageCertSign}
	caDER, err := x509.CreateCertificate(rand.Reader, caTmpl, caTmpl, &caKey.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	ca, _ := x509.ParseCertificate(caDER)
	key, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	tmpl := &x509.Certificate{SerialNumber: big.NewInt(2), Subject: pkix.Name{CommonName: name}, DNSNames: []string{name},
		NotBefore: time.Now().Add(-2 * time.Hour), NotAfter: notAfter, ExtKeyUsage: []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth}}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca, &key.PublicKey, caKey)
	if err != nil {
		t.Fatal(err)
	}
	caFile := filepath.Join(t.TempDir(), "ca.pem")
	if err := os.WriteFile(caFile, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: caDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	return caFile, tls.Certificate{Certificate: [][]byte{der}, PrivateKey: key}
}

// tlsServer is an LDAPS-shaped endpoint on loopback: it completes the TLS
// handshake and closes.
func tlsServer(t *testing.T, cert tls.Certificate) string {
	t.Helper()
	ln, err := tls.Listen("tcp", "127.0.0.1:0", &tls.Config{Certificates: []tls.Certificate{cert}})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go func() {
				c.(*tls.Conn).Handshake()
				c.Close()
			}()
		}
	}()
	return "ldaps://" + ln.Addr().String()
}

// TestDCCheckCertificateExpiry: a certificate close to expiry warns, an
// expired one fails.
func TestDCCheckCertificateExpiry(t *testing.T) {
	for _, tc := range []struct {
		name     string
		notAfter time.Time
		want     Status
	}{
		{"a year left", time.Now().Add(365 * 24 * time.Hour), Pass},
		{"ten days left", time.Now().Add(10 * 24 * time.Hour), Warn},
		{"expired", time.Now().Add(-time.Hour), Fail},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ca, cert := certPair(t, "dc1.corp.example", tc.notAfter)
			u := tlsServer(t, cert)
			r := DCCheck(DCConfig{URLs: []string{u}, CAFile: ca, ServerName: "dc1.corp.example"}).Run(context.Background())[0]
			if r.Status != tc.want {
				t.Errorf("got %+v, want %s", r, tc.want)
			}
		})
	}
}

// TestDCCheckSamba probes a real Samba AD DC over LDAPS and StartTLS.
func TestDCCheckSamba(t *testing.T) {
	if err := samba.Available(); err != nil {
		t.Skip("skipped:", err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	dc, err := samba.Start(ctx, samba.Options{})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(dc.Stop)
	_, otherDER, err := samba.NewCA("unrelated CA")
	if err != nil {
		t.Fatal(err)
	}
	otherCA := filepath.Join(t.TempDir(), "other.pem")
	if err := os.WriteFile(otherCA, pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: otherDER}), 0o644); err != nil {
		t.Fatal(err)
	}
	// The harness issues week-long certificates: warn only inside a day.
	closed := "ldaps://" + net.JoinHostPort(dc.IP.String(), "6360")
	for _, tc := range []struct {
		name       string
		cfg        DCConfig
		want       Status
		wantDetail string
	}{
		{"ldaps", DCConfig{URLs: []string{dc.LDAPSURL()}, CAFile: dc.CAFile, ServerName: dc.Hostname, ExpiryWarning: time.Hour}, Pass, "valid until"},
		{"starttls", DCConfig{URLs: []string{dc.StartTLSURL()}, StartTLS: true, CAFile: dc.CAFile, ServerName: dc.Hostname, ExpiryWarning: time.Hour}, Pass, "valid until"},
		{"wrong CA", DCConfig{URLs: []string{dc.LDAPSURL()}, CAFile: otherCA, ServerName: dc.Hostname}, Fail, "not trusted"},
		{"wrong name", DCConfig{URLs: []string{dc.LDAPSURL()}, CAFile: dc.CAFile, ServerName: "dc9.corp.example"}, Fail, "name mismatch"},
		{"plain ldap without starttls", DCConfig{URLs: []string{dc.StartTLSURL()}, CAFile: dc.CAFile}, Fail, "without start_tls"},
		{"closed port", DCConfig{URLs: []string{closed}, CAFile: dc.CAFile, ServerName: dc.Hostname, DialTimeout: 2 * time.Second}, Fail, "unreachable"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := DCCheck(tc.cfg).Run(ctx)[0]
			if r.Status != tc.want || !strings.Contains(r.Detail, tc.wantDetail) || (r.Status != Pass && r.Fix == "") {
				t.Errorf("got %+v, want %s with %q and a fix", r, tc.want, tc.wantDetail)
			}
		})
	}
}
