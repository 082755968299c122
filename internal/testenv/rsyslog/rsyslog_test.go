package rsyslog

import (
	"bytes"
	"crypto/tls"
	"crypto/x509"
	"fmt"
	"net"
	"os"
	"strings"
	"testing"
	"time"
)

// waitFor polls the output file until it contains want.
func waitFor(t *testing.T, s *Server, want string) {
	t.Helper()
	deadline := time.Now().Add(20 * time.Second)
	for time.Now().Before(deadline) {
		b, _ := os.ReadFile(s.File)
		if bytes.Contains(b, []byte(want)) {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	b, _ := os.ReadFile(s.File)
	t.Fatalf("got file %q, want it to contain %q; rsyslog said: %s", b, want, s.Output())
}

func TestReceivesOverEveryInputAndSurvivesRestart(t *testing.T) {
	for _, in := range []string{InputTCP, InputPTCP, InputUDP, InputTLS} {
		t.Run(in, func(t *testing.T) {
			s := Start(t, Options{Input: in})
			send := func(msg string) {
				t.Helper()
				var c net.Conn
				var err error
				switch in {
				case InputUDP:
					c, err = net.Dial("udp", s.Addr)
				case InputTLS:
					pool := x509.NewCertPool()
					pem, _ := os.ReadFile(s.CAFile)
					pool.AppendCertsFromPEM(pem)
					c, err = tls.Dial("tcp", s.Addr, &tls.Config{RootCAs: pool, ServerName: "127.0.0.1"})
				default:
					c, err = net.Dial("tcp", s.Addr)
				}
				if err != nil {
					t.Fatal(err)
				}
				defer c.Close()
				if in == InputUDP {
					fmt.Fprint(c, msg)
				} else {
					fmt.Fprintf(c, "%d %s", len(msg), msg)
				}
			}
			send(`<14>1 2026-01-01T00:00:00Z host app 1 ID [x@32473 a="b"] first`)
			waitFor(t, s, "first")
			if err := s.Stop(); err != nil {
				t.Fatal(err)
			}
			if err := s.Start(); err != nil {
				t.Fatal(err)
			}
			send(`<14>1 2026-01-01T00:00:00Z host app 1 ID - second`)
			waitFor(t, s, "second")
			b, _ := os.ReadFile(s.File)
			if !strings.Contains(string(b), `[x@32473 a="b"]`) {
				t.Errorf("got %q, want the structured data kept", b)
			}
		})
	}
}
