package syslog

import (
	"bufio"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"net"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"

	"github.com/applianced/applianced/internal/conf"
)

// Sentinel errors of the transports.
var (
	// ErrReceiverClosed means the receiver closed the connection.
	ErrReceiverClosed = errors.New("syslog: receiver closed the connection")
	// ErrReceiverStalled means a write did not complete within the write
	// timeout: the receiver accepts but does not read.
	ErrReceiverStalled = errors.New("syslog: receiver is not reading (write timed out)")
)

// tlsConfig builds the client TLS configuration of a tls:// target.
func tlsConfig(t Target, ep endpoint) (*tls.Config, error) {
	cfg := &tls.Config{MinVersion: tls.VersionTLS12, ServerName: t.ServerName}
	if cfg.ServerName == "" {
		cfg.ServerName = ep.host
	}
	if t.CAFile != "" {
		pool, err := conf.CertPool(t.CAFile)
		if err != nil {
			return nil, fmt.Errorf("syslog: %s: ca_file: %w", t.Address, err)
		}
		cfg.RootCAs = pool
	}
	if t.CertFile != "" {
		cert, err := tls.LoadX509KeyPair(t.CertFile, t.KeyFile)
		if err != nil {
			return nil, fmt.Errorf("syslog: %s: client certificate: %w", t.Address, err)
		}
		cfg.Certificates = []tls.Certificate{cert}
	}
	return cfg, nil
}

// countingConn counts the bytes written to the socket, TLS records
// included, so they can be compared with what the peer acknowledged.
type countingConn struct {
	net.Conn
	n atomic.Uint64
}

func (c *countingConn) Write(b []byte) (int, error) {
	n, err := c.Conn.Write(b)
	c.n.Add(uint64(n))
	return n, err
}

// conn is one connection to a receiver.
type conn struct {
	ep    endpoint
	w     net.Conn      // what messages are written to (TLS or plain)
	raw   *countingConn // the socket
	tcp   *net.TCPConn  // nil for datagrams
	dead  chan struct{} // closed when the receiver closed or reset
	err   atomic.Pointer[error]
	maxWd uint32 // largest window the peer advertised
	start time.Time
	// relp is set on relp:// and relp+tls://: the receiver's answers.
	relp *relpConn
}

// relpConn is the receiving side of a RELP session.
type relpConn struct {
	r *bufio.Reader
	// acked counts the commands the receiver answered with 200, in order
	// (the open is 1).
	acked atomic.Uint64
}

// dial connects to the target within timeout.
func dial(ctx context.Context, ep endpoint, tc *tls.Config, timeout time.Duration) (*conn, error) {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	var d net.Dialer
	network := "tcp"
	switch ep.scheme {
	case "udp":
		network = "udp"
	case "unix":
		network = "unixgram"
	}
	nc, err := d.DialContext(ctx, network, ep.addr)
	if err != nil {
		return nil, fmt.Errorf("syslog: connect %s://%s: %w", ep.scheme, ep.addr, err)
	}
	c := &conn{ep: ep, raw: &countingConn{Conn: nc}, dead: make(chan struct{}), start: time.Now()}
	c.w = c.raw
	if tcp, ok := nc.(*net.TCPConn); ok {
		c.tcp = tcp
		_ = tcp.SetKeepAlive(true)
		_ = tcp.SetKeepAlivePeriod(15 * time.Second)
	}
	if ep.tls() {
		tl := tls.Client(c.raw, tc)
		if err := tl.HandshakeContext(ctx); err != nil {
			nc.Close()
			return nil, fmt.Errorf("syslog: tls handshake with %s: %w", ep.addr, err)
		}
		c.w = tl
	}
	if ep.relp() {
		if err := c.openRELP(ctx); err != nil {
			nc.Close()
			return nil, err
		}
	}
	if ep.stream() {
		go c.watch()
	}
	return c, nil
}

// openRELP opens the RELP session: the open command, and its answer
// before anything else is sent.
func (c *conn) openRELP(ctx context.Context) error {
	if dl, ok := ctx.Deadline(); ok {
		_ = c.w.SetDeadline(dl)
		defer c.w.SetDeadline(time.Time{})
	}
	c.relp = &relpConn{r: bufio.NewReader(c.w)}
	if _, err := c.w.Write(appendRELPFrame(nil, 1, "open", []byte(relpOffer))); err != nil {
		return c.closedErr(fmt.Errorf("syslog: RELP open to %s: %w", c.ep.addr, err))
	}
	f, err := readRELPFrame(c.relp.r)
	if err != nil {
		return c.closedErr(fmt.Errorf("syslog: RELP open to %s: %w", c.ep.addr, err))
	}
	if err := checkRELPOpen(f); err != nil {
		return fmt.Errorf("%w (%s)", err, c.ep.addr)
	}
	c.relp.acked.Store(1)
	return nil
}

// watch reads from a stream connection; receivers send nothing, so any
// return means the connection is gone. A RELP receiver's answers are read
// by watchRELP.
func (c *conn) watch() {
	if c.relp != nil {
		c.watchRELP()
		return
	}
	var b [512]byte
	for {
		_, err := c.w.Read(b[:])
		if err != nil {
			if errors.Is(err, io.EOF) || errors.Is(err, unix.ECONNRESET) {
				err = c.closedErr(ErrReceiverClosed)
			}
			c.err.Store(&err)
			close(c.dead)
			return
		}
	}
}

// watchRELP reads the receiver's answers, in the order of the commands:
// each 200 counts its command as processed; any other status, an answer
// out of order or a frame that does not parse ends the connection (what
// was not answered is sent again on the next).
func (c *conn) watchRELP() {
	fail := func(err error) {
		c.err.Store(&err)
		close(c.dead)
	}
	for {
		f, err := readRELPFrame(c.relp.r)
		if err != nil {
			if errors.Is(err, ErrReceiverClosed) || errors.Is(err, unix.ECONNRESET) {
				err = c.closedErr(ErrReceiverClosed)
			}
			fail(err)
			return
		}
		switch f.cmd {
		case "rsp":
		case "serverclose":
			fail(fmt.Errorf("%w (RELP serverclose)", ErrReceiverClosed))
			return
		default:
			fail(fmt.Errorf("syslog: RELP receiver %s sent the command %q; a client expects only answers", c.ep.addr, f.cmd))
			return
		}
		next := c.relp.acked.Load() + 1
		if f.txnr != relpTxnr(next) {
			fail(fmt.Errorf("syslog: RELP receiver %s answered TXNR %d, want %d (answers come in order)", c.ep.addr, f.txnr, relpTxnr(next)))
			return
		}
		if code, text := f.status(); code != 200 {
			fail(fmt.Errorf("%w message TXNR %d: %d %s", ErrRELPRefused, f.txnr, code, text))
			return
		}
		c.relp.acked.Store(next)
	}
}

// deadErr returns why the connection died.
func (c *conn) deadErr() error {
	if p := c.err.Load(); p != nil {
		return *p
	}
	return ErrReceiverClosed
}

// write sends b within timeout, or until ctx ends: the caller arranges for
// the socket to be closed when ctx ends (abort), which ends a blocked write
// at once; the check after setting the deadline covers a ctx that ended
// just before it.
func (c *conn) write(ctx context.Context, b []byte, timeout time.Duration) error {
	_ = c.w.SetWriteDeadline(time.Now().Add(timeout))
	if err := ctx.Err(); err != nil {
		return err
	}
	_, err := c.w.Write(b)
	if err != nil {
		if cerr := ctx.Err(); cerr != nil {
			return cerr
		}
		var ne net.Error
		if errors.As(err, &ne) && ne.Timeout() {
			return fmt.Errorf("%w: %s after %v", ErrReceiverStalled, c.ep.addr, timeout)
		}
		if errors.Is(err, unix.EPIPE) || errors.Is(err, unix.ECONNRESET) {
			return c.closedErr(fmt.Errorf("%w: write to %s: %w", ErrReceiverClosed, c.ep.addr, err))
		}
		return fmt.Errorf("syslog: write to %s: %w", c.ep.addr, err)
	}
	return nil
}

// closedErr adds a hint to a close soon after a TLS handshake: that is how
// a receiver refuses a client (missing or unknown client certificate).
func (c *conn) closedErr(err error) error {
	if c.ep.tls() && time.Since(c.start) < 5*time.Second {
		return fmt.Errorf("%w (right after the TLS handshake: the receiver may require a client certificate, cert_file and key_file, or refuse this one)", err)
	}
	return err
}

// written returns the bytes written to the socket so far.
func (c *conn) written() uint64 { return c.raw.n.Load() }

// received returns how many of the bytes written the receiver's TCP has
// acknowledged, and whether the receiving application is taking data: a
// receiver that reads sends a window update once its window could double,
// so a window below half the largest it advertised means data sits unread
// in its buffer. Datagram sockets report everything written, taken.
//
// Over RELP, acked counts the commands the receiving application answered,
// which is proof it processed them.
func (c *conn) received() (acked uint64, taking bool, err error) {
	if c.relp != nil {
		return c.relp.acked.Load(), true, nil
	}
	if c.tcp == nil {
		return c.written(), true, nil
	}
	sc, err := c.tcp.SyscallConn()
	if err != nil {
		return 0, false, err
	}
	var (
		info *unix.TCPInfo
		outq int
		ierr error
	)
	cerr := sc.Control(func(fd uintptr) {
		info, ierr = unix.GetsockoptTCPInfo(int(fd), unix.IPPROTO_TCP, unix.TCP_INFO)
		if ierr == nil {
			outq, ierr = unix.IoctlGetInt(int(fd), unix.SIOCOUTQ)
		}
	})
	if cerr != nil {
		return 0, false, cerr
	}
	if ierr != nil {
		return 0, false, fmt.Errorf("syslog: tcp_info: %w", ierr)
	}
	w := c.written()
	if uint64(outq) > w {
		return 0, false, nil
	}
	if info.Snd_wnd > c.maxWd {
		c.maxWd = info.Snd_wnd
	}
	// Kernels without tcpi_snd_wnd report 0 for both: acknowledged counts.
	return w - uint64(outq), info.Snd_wnd*2 >= c.maxWd, nil
}

// closeGrace bounds the TLS close_notify sent at close: a receiver that
// does not read must not hold up a reconnect or a stop.
const closeGrace = 250 * time.Millisecond

// abort closes the socket at once, ending any blocked read or write. It is
// what a cancelled ctx does to a connection.
func (c *conn) abort() { _ = c.raw.Conn.Close() }

// close closes the connection; a TLS close_notify gets closeGrace, then the
// socket is closed regardless.
func (c *conn) close() error {
	t := time.AfterFunc(closeGrace, c.abort)
	defer t.Stop()
	err := c.w.Close()
	c.abort()
	return err
}
