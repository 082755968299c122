package pki

import (
	"crypto/tls"
	"crypto/x509"
	"net"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestIssueVerifies(t *testing.T) {
	ca, err := NewCA("test CA", time.Now().Add(time.Hour), x509.KeyUsageCertSign)
	if err != nil {
		t.Fatal(err)
	}
	other, err := NewCA("other CA", time.Now().Add(time.Hour), x509.KeyUsageCertSign)
	if err != nil {
		t.Fatal(err)
	}
	leaf, err := ca.Issue(Leaf{
		CommonName:  "localhost",
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: x509.ExtKeyUsageServerAuth,
		NotAfter:    time.Now().Add(time.Hour),
	})
	if err != nil {
		t.Fatal(err)
	}
	cert, err := x509.ParseCertificate(leaf.DER)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		roots *CA
		host  string
		ok    bool
	}{
		{"dns name", ca, "localhost", true},
		{"ip", ca, "127.0.0.1", true},
		{"host not in the certificate", ca, "example.org", false},
		{"unrelated CA", other, "localhost", false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			pool := x509.NewCertPool()
			pool.AddCert(tt.roots.Cert)
			_, err := cert.Verify(x509.VerifyOptions{Roots: pool, DNSName: tt.host})
			if got := err == nil; got != tt.ok {
				t.Errorf("verify %s: got ok=%v (%v), want %v", tt.host, got, err, tt.ok)
			}
		})
	}
	if cert.SerialNumber.Sign() <= 0 || ca.Cert.SerialNumber.Sign() <= 0 {
		t.Errorf("serials: got %v and %v, want both positive", cert.SerialNumber, ca.Cert.SerialNumber)
	}
}

func TestSelfSignedWriteFiles(t *testing.T) {
	c, err := SelfSigned(Leaf{CommonName: "a", DNSNames: []string{"a"}, ExtKeyUsage: x509.ExtKeyUsageServerAuth, NotAfter: time.Now().Add(time.Hour)})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	cf, kf := filepath.Join(dir, "c.pem"), filepath.Join(dir, "k.pem")
	if err := c.WriteFiles(cf, 0o644, kf, 0o600); err != nil {
		t.Fatal(err)
	}
	for _, f := range []struct {
		path string
		mode os.FileMode
	}{{cf, 0o644}, {kf, 0o600}} {
		fi, err := os.Stat(f.path)
		if err != nil {
			t.Fatal(err)
		}
		if got := fi.Mode().Perm(); got != f.mode {
			t.Errorf("%s: got mode %04o, want %04o", f.path, got, f.mode)
		}
	}
	if _, err := tls.LoadX509KeyPair(cf, kf); err != nil {
		t.Errorf("load pair: got %v, want nil", err)
	}
	cert, _ := x509.ParseCertificate(c.DER)
	if err := cert.CheckSignature(cert.SignatureAlgorithm, cert.RawTBSCertificate, cert.Signature); err != nil {
		t.Errorf("self signature: got %v, want nil", err)
	}
}

func TestSerialPositive(t *testing.T) {
	for range 1000 {
		n, err := Serial()
		if err != nil {
			t.Fatal(err)
		}
		if n.Sign() <= 0 || n.BitLen() > 127 {
			t.Fatalf("serial %v: want in [1, 2^127)", n)
		}
	}
}
