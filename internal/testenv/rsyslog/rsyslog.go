// Package rsyslog runs a real rsyslog receiver for tests: its own
// configuration in a temporary directory, one input on loopback (imtcp,
// imptcp, imudp, imtcp with TLS through the gtls driver and a CA the
// harness generates, or imrelp with or without TLS), and one output file the
// test reads. It can be stopped
// and started again on the same port to simulate a SIEM outage.
//
//	srv := rsyslog.Start(t, rsyslog.Options{Input: rsyslog.InputTLS})
//	// send to srv.Addr, trusting srv.CAFile; read srv.File
//
// The package refuses to run without the rsyslogd binary (Available says
// so; tests skip and say which). Nothing it starts listens outside
// 127.0.0.1, and t.Cleanup stops the process even when the test fails.
package rsyslog

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/x509"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/pki"
)

// Inputs.
const (
	InputTCP  = "imtcp"  // plain TCP, octet-counting and newline framing
	InputPTCP = "imptcp" // rsyslog's performance TCP input
	InputUDP  = "imudp"
	InputTLS  = "tls" // imtcp with the gtls stream driver
	// InputRELP is imrelp: RELP, whose answers say a message was processed.
	InputRELP = "imrelp"
	// InputRELPTLS is imrelp with TLS.
	InputRELPTLS = "imrelp-tls"
)

// Templates of the output file.
const (
	// TemplateRFC5424 writes each message as RFC 5424, structured data
	// included (RSYSLOG_SyslogProtocol23Format).
	TemplateRFC5424 = "RSYSLOG_SyslogProtocol23Format"
	// TemplateTraditional writes "Mmm dd hh:mm:ss host tag msg", rsyslog's
	// default file format.
	TemplateTraditional = "RSYSLOG_TraditionalFileFormat"
	// TemplateRaw writes the message exactly as received.
	TemplateRaw = "raw"
)

// Options configure Start. The zero value is a TCP receiver writing RFC 5424.
type Options struct {
	Input    string // default InputTCP
	Template string // default TemplateRFC5424
	// MaxMessageSize is rsyslog's maxMessageSize; default 256k.
	MaxMessageSize int
	// RequireClientCert makes an InputTLS receiver accept only clients with
	// a certificate from its CA (gtls authMode x509/certvalid); the harness
	// writes one to ClientCertFile and ClientKeyFile. An InputRELPTLS
	// receiver always requires that certificate.
	RequireClientCert bool
}

// Server is a running (or stopped) rsyslog.
type Server struct {
	Addr   string // 127.0.0.1:port of the input
	File   string // the output file
	CAFile string // for InputTLS: the CA that signed the server certificate (PEM)
	// ClientCertFile and ClientKeyFile are a client certificate from the
	// same CA, for RequireClientCert.
	ClientCertFile, ClientKeyFile string
	Dir                           string // the receiver's own directory

	t    testing.TB
	o    Options
	conf string
	pid  string

	mu     sync.Mutex
	cmd    *exec.Cmd
	out    *bytes.Buffer
	exited chan struct{}
}

// Available reports why rsyslog cannot run here, or nil.
func Available() error {
	if _, err := exec.LookPath("rsyslogd"); err != nil {
		if _, err := os.Stat("/usr/sbin/rsyslogd"); err != nil {
			return errors.New("rsyslog: rsyslogd is not installed (Debian package rsyslog; rsyslog-gnutls for TLS)")
		}
	}
	return nil
}

func binary() string {
	if p, err := exec.LookPath("rsyslogd"); err == nil {
		return p
	}
	return "/usr/sbin/rsyslogd"
}

// Start configures and starts a receiver; it skips the test when rsyslog is
// missing and fails it when rsyslog does not come up.
func Start(t testing.TB, o Options) *Server {
	t.Helper()
	if err := Available(); err != nil {
		t.Skip(err.Error())
	}
	if o.Input == "" {
		o.Input = InputTCP
	}
	if o.Template == "" {
		o.Template = TemplateRFC5424
	}
	if o.MaxMessageSize == 0 {
		o.MaxMessageSize = 256 << 10
	}
	if o.Input == InputTLS {
		if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/rsyslog/lmnsd_gtls.so"); err != nil {
			t.Skip("rsyslog: the gtls driver is missing (Debian package rsyslog-gnutls)")
		}
	}
	if o.Input == InputRELP || o.Input == InputRELPTLS {
		if _, err := os.Stat("/usr/lib/x86_64-linux-gnu/rsyslog/imrelp.so"); err != nil {
			t.Skip("rsyslog: imrelp is missing (Debian package rsyslog-relp)")
		}
	}
	dir := t.TempDir()
	s := &Server{t: t, o: o, Dir: dir, File: filepath.Join(dir, "received.log"),
		conf: filepath.Join(dir, "rsyslog.conf"), pid: filepath.Join(dir, "rsyslog.pid")}
	port, err := freePort(o.Input == InputUDP)
	if err != nil {
		t.Fatalf("rsyslog: %v", err)
	}
	s.Addr = net.JoinHostPort("127.0.0.1", strconv.Itoa(port))
	if err := os.MkdirAll(filepath.Join(dir, "work"), 0o700); err != nil {
		t.Fatal(err)
	}
	if err := s.writeConf(port); err != nil {
		t.Fatalf("rsyslog: %v", err)
	}
	t.Cleanup(func() { _ = s.Stop() })
	if err := s.Start(); err != nil {
		t.Fatalf("rsyslog: %v", err)
	}
	return s
}

func freePort(udp bool) (int, error) {
	if udp {
		c, err := net.ListenPacket("udp", "127.0.0.1:0")
		if err != nil {
			return 0, err
		}
		defer c.Close()
		return c.LocalAddr().(*net.UDPAddr).Port, nil
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func (s *Server) writeConf(port int) error {
	var b strings.Builder
	global := fmt.Sprintf(`workDirectory=%q maxMessageSize="%d"`, filepath.Join(s.Dir, "work"), s.o.MaxMessageSize)
	var input string
	switch s.o.Input {
	case InputTCP:
		input = fmt.Sprintf("module(load=\"imtcp\")\ninput(type=\"imtcp\" port=\"%d\" address=\"127.0.0.1\")\n", port)
	case InputPTCP:
		input = fmt.Sprintf("module(load=\"imptcp\")\ninput(type=\"imptcp\" port=\"%d\" address=\"127.0.0.1\")\n", port)
	case InputUDP:
		input = fmt.Sprintf("module(load=\"imudp\")\ninput(type=\"imudp\" port=\"%d\" address=\"127.0.0.1\")\n", port)
	case InputTLS:
		ca, cert, key, err := s.writeCerts()
		if err != nil {
			return err
		}
		s.CAFile = ca
		global += fmt.Sprintf(` defaultNetstreamDriver="gtls" defaultNetstreamDriverCAFile=%q defaultNetstreamDriverCertFile=%q defaultNetstreamDriverKeyFile=%q`, ca, cert, key)
		auth := "anon"
		if s.o.RequireClientCert {
			auth = "x509/certvalid"
		}
		input = fmt.Sprintf("module(load=\"imtcp\" streamDriver.name=\"gtls\" streamDriver.mode=\"1\" streamDriver.authMode=%q)\ninput(type=\"imtcp\" port=\"%d\" address=\"127.0.0.1\")\n", auth, port)
	case InputRELP:
		input = fmt.Sprintf("module(load=\"imrelp\")\ninput(type=\"imrelp\" port=\"%d\" address=\"127.0.0.1\")\n", port)
	case InputRELPTLS:
		ca, cert, key, err := s.writeCerts()
		if err != nil {
			return err
		}
		s.CAFile = ca
		// imrelp with certificates always asks the client for one (as
		// RELP over TLS is deployed): the harness's client certificate,
		// checked by name.
		input = fmt.Sprintf("module(load=\"imrelp\")\ninput(type=\"imrelp\" port=\"%d\" address=\"127.0.0.1\" tls=\"on\" tls.caCert=%q tls.myCert=%q tls.myPrivKey=%q tls.authMode=\"name\" tls.permittedPeer=[%q])\n", port, ca, cert, key, clientCN)
	default:
		return fmt.Errorf("unknown input %q", s.o.Input)
	}
	fmt.Fprintf(&b, "global(%s)\n", global)
	b.WriteString("main_queue(queue.type=\"Direct\")\n")
	b.WriteString(input)
	tmpl := s.o.Template
	if tmpl == TemplateRaw {
		b.WriteString("template(name=\"raw\" type=\"string\" string=\"%rawmsg%\\n\")\n")
	}
	fmt.Fprintf(&b, "action(type=\"omfile\" file=%q template=%q flushOnTXEnd=\"on\" asyncWriting=\"off\")\n", s.File, tmpl)
	return os.WriteFile(s.conf, []byte(b.String()), 0o600)
}

// Start starts (or restarts) the receiver with the same port and file, and
// waits until it accepts.
func (s *Server) Start() error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd != nil {
		return errors.New("rsyslog: already running")
	}
	var out bytes.Buffer
	cmd := exec.Command(binary(), "-n", "-f", s.conf, "-i", s.pid)
	cmd.Stdout, cmd.Stderr = &out, &out
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("rsyslog: start: %w", err)
	}
	exited := make(chan struct{})
	go func() { _ = cmd.Wait(); close(exited) }()
	s.cmd, s.out = cmd, &out
	deadline := time.Now().Add(15 * time.Second)
	for {
		select {
		case <-exited:
			s.cmd = nil
			return fmt.Errorf("rsyslog exited at start: %s", out.String())
		default:
		}
		if s.ready() {
			s.exited = exited
			return nil
		}
		if time.Now().After(deadline) {
			_ = cmd.Process.Kill()
			<-exited
			s.cmd = nil
			return fmt.Errorf("rsyslog did not come up within 15s: %s", out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// ready reports whether the input accepts: a TCP connect for stream
// inputs, the pid file for UDP (rsyslog writes it after binding).
func (s *Server) ready() bool {
	if s.o.Input == InputUDP {
		_, err := os.Stat(s.pid)
		return err == nil
	}
	c, err := net.DialTimeout("tcp", s.Addr, time.Second)
	if err != nil {
		return false
	}
	c.Close()
	return true
}

// Stop stops the receiver gracefully (SIGTERM; SIGKILL after 10 s). It is
// safe to call on a stopped receiver.
func (s *Server) Stop() error { return s.stop(syscall.SIGTERM) }

// Kill stops the receiver with SIGKILL.
func (s *Server) Kill() error { return s.stop(syscall.SIGKILL) }

// Pause stops the receiver's process without ending it (SIGSTOP): its
// kernel still accepts and acknowledges data, which nobody reads. Resume,
// Stop or Kill end the pause. It returns once every thread of the process
// is stopped: kill(2) only queues the signal, and on a loaded machine a
// thread can go on answering for a moment after it returns.
func (s *Server) Pause() error {
	if err := s.signal(syscall.SIGSTOP); err != nil {
		return err
	}
	s.mu.Lock()
	pid := s.cmd.Process.Pid
	s.mu.Unlock()
	deadline := time.Now().Add(10 * time.Second)
	for {
		stopped, err := allThreadsStopped(pid)
		if err != nil || stopped {
			return err
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("rsyslog: pid %d not stopped 10 s after SIGSTOP", pid)
		}
		time.Sleep(time.Millisecond)
	}
}

// allThreadsStopped says whether every thread of pid is in state T
// (stopped), from /proc/PID/task/*/stat.
func allThreadsStopped(pid int) (bool, error) {
	tasks, err := filepath.Glob(fmt.Sprintf("/proc/%d/task/*/stat", pid))
	if err != nil || len(tasks) == 0 {
		return false, fmt.Errorf("rsyslog: reading the threads of pid %d: %v", pid, err)
	}
	for _, t := range tasks {
		b, err := os.ReadFile(t)
		if err != nil {
			return false, err
		}
		// "TID (comm) STATE ...": comm may hold anything but ends at the
		// last ')'.
		i := bytes.LastIndexByte(b, ')')
		if i < 0 || i+2 >= len(b) {
			return false, fmt.Errorf("rsyslog: %s: unexpected %q", t, b)
		}
		if b[i+2] != 'T' {
			return false, nil
		}
	}
	return true, nil
}

// Resume continues a paused receiver (SIGCONT).
func (s *Server) Resume() error { return s.signal(syscall.SIGCONT) }

func (s *Server) signal(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return errors.New("rsyslog: not running")
	}
	return s.cmd.Process.Signal(sig)
}

func (s *Server) stop(sig syscall.Signal) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.cmd == nil {
		return nil
	}
	_ = s.cmd.Process.Signal(sig)
	select {
	case <-s.exited:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-s.exited
	}
	s.cmd = nil
	_ = os.Remove(s.pid)
	return nil
}

// Output returns what rsyslog printed (for failure messages).
func (s *Server) Output() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.out == nil {
		return ""
	}
	return s.out.String()
}

// writeCerts makes a CA and a server certificate for 127.0.0.1/localhost.
func (s *Server) writeCerts() (caFile, certFile, keyFile string, err error) {
	ca, err := newCA("rsyslog test CA")
	if err != nil {
		return "", "", "", err
	}
	leaf, err := ca.Issue(pki.Leaf{
		CommonName:  "localhost",
		DNSNames:    []string{"localhost"},
		IPAddresses: []net.IP{net.IPv4(127, 0, 0, 1)},
		ExtKeyUsage: x509.ExtKeyUsageServerAuth,
		NotAfter:    time.Now().Add(24 * time.Hour),
	})
	if err != nil {
		return "", "", "", err
	}
	if err := s.writeClientCert(ca); err != nil {
		return "", "", "", err
	}
	caFile, certFile, keyFile = filepath.Join(s.Dir, "ca.pem"), filepath.Join(s.Dir, "cert.pem"), filepath.Join(s.Dir, "key.pem")
	if err := os.WriteFile(caFile, pki.CertPEM(ca.DER), 0o600); err != nil {
		return "", "", "", err
	}
	if err := leaf.WriteFiles(certFile, 0o600, keyFile, 0o600); err != nil {
		return "", "", "", err
	}
	return caFile, certFile, keyFile, nil
}

// clientCN names the harness's client certificate.
const clientCN = "applianced-client"

// writeClientCert issues a client certificate from the harness's CA.
func (s *Server) writeClientCert(ca *pki.CA) error {
	leaf, err := ca.Issue(pki.Leaf{
		CommonName:  clientCN,
		ExtKeyUsage: x509.ExtKeyUsageClientAuth,
		NotAfter:    time.Now().Add(24 * time.Hour),
	})
	if err != nil {
		return err
	}
	s.ClientCertFile, s.ClientKeyFile = filepath.Join(s.Dir, "client.pem"), filepath.Join(s.Dir, "client.key")
	return leaf.WriteFiles(s.ClientCertFile, 0o600, s.ClientKeyFile, 0o600)
}

// NewCA returns a new self-signed CA key and certificate (DER), for tests
// that need a second, unrelated CA.
func NewCA(cn string) (*ecdsa.PrivateKey, []byte, error) {
	ca, err := newCA(cn)
	if err != nil {
		return nil, nil, err
	}
	return ca.Key, ca.DER, nil
}

func newCA(cn string) (*pki.CA, error) {
	return pki.NewCA(cn, time.Now().Add(24*time.Hour), x509.KeyUsageCertSign|x509.KeyUsageDigitalSignature)
}
