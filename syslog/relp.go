package syslog

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// RELP, the Reliable Event Logging Protocol of rsyslog (imrelp): each
// message is a command the receiving application answers once it has
// processed it, so a message counts as delivered only on that answer, not
// on the receiver's TCP acknowledgement. A frame is
//
//	TXNR SP COMMAND SP DATALEN [SP DATA] LF
//
// with TXNR from 1 to 999,999,999 (then 1 again), and an answer is the
// command "rsp" with the same TXNR, in the order the commands were sent,
// whose data starts with a three-digit status (200 is success).

// framingRELP is the formatter's framing for relp:// and relp+tls://; it is
// not a config value.
const framingRELP = "relp"

const (
	relpMaxTxnr = 999_999_999
	// relpMaxAnswer bounds the data of a frame the receiver sends: answers
	// are a status line and, for open, a few offers.
	relpMaxAnswer = 64 << 10
	// relpOffer is what the appliance asks for when it opens a session.
	relpOffer = "relp_version=0\nrelp_software=applianced\ncommands=syslog"
)

// ErrRELPRefused means the receiver answered a RELP command with a status
// other than 200.
var ErrRELPRefused = errors.New("syslog: RELP receiver refused")

// relpTxnr is the TXNR on the wire of the n-th command of a session (n
// from 1: the open).
func relpTxnr(n uint64) uint64 { return (n-1)%relpMaxTxnr + 1 }

// appendRELPFrame appends one command frame.
func appendRELPFrame(dst []byte, txnr uint64, cmd string, data []byte) []byte {
	dst = strconv.AppendUint(dst, txnr, 10)
	dst = append(dst, ' ')
	dst = append(dst, cmd...)
	dst = append(dst, ' ')
	dst = strconv.AppendInt(dst, int64(len(data)), 10)
	if len(data) > 0 {
		dst = append(dst, ' ')
		dst = append(dst, data...)
	}
	return append(dst, '\n')
}

// relpFrame is one frame read from the receiver.
type relpFrame struct {
	txnr uint64
	cmd  string
	data []byte
}

// status is the three-digit status at the start of an answer's data, and
// the rest of its first line.
func (f relpFrame) status() (code int, text string) {
	line, _, _ := bytes.Cut(f.data, []byte("\n"))
	if len(line) < 3 {
		return 0, string(line)
	}
	code, err := strconv.Atoi(string(line[:3]))
	if err != nil || line[0] == '+' || line[0] == '-' {
		return 0, string(line)
	}
	return code, string(bytes.TrimSpace(line[3:]))
}

// readRELPFrame reads one frame. It accepts "DATALEN LF" with no data, and
// refuses anything else that is not a well-formed frame, data longer than
// relpMaxAnswer included.
func readRELPFrame(r *bufio.Reader) (relpFrame, error) {
	var f relpFrame
	txnr, err := readRELPNumber(r, ' ', "TXNR")
	if err != nil {
		return f, err
	}
	if txnr > relpMaxTxnr {
		return f, fmt.Errorf("syslog: RELP frame: TXNR %d out of range", txnr)
	}
	f.txnr = txnr
	var cmd []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			return f, relpEOF(err)
		}
		if b == ' ' {
			break
		}
		if (b < 'a' || b > 'z') || len(cmd) == 32 {
			return f, fmt.Errorf("syslog: RELP frame: bad command byte %q", b)
		}
		cmd = append(cmd, b)
	}
	if len(cmd) == 0 {
		return f, errors.New("syslog: RELP frame: empty command")
	}
	f.cmd = string(cmd)
	n, end, err := readRELPLength(r)
	if err != nil {
		return f, err
	}
	if n > relpMaxAnswer {
		return f, fmt.Errorf("syslog: RELP frame: %d bytes of data, more than the %d an answer may have", n, relpMaxAnswer)
	}
	if end == '\n' {
		if n != 0 {
			return f, errors.New("syslog: RELP frame: data length without data")
		}
		return f, nil
	}
	f.data = make([]byte, n)
	if _, err := io.ReadFull(r, f.data); err != nil {
		return f, relpEOF(err)
	}
	b, err := r.ReadByte()
	if err != nil {
		return f, relpEOF(err)
	}
	if b != '\n' {
		return f, fmt.Errorf("syslog: RELP frame: %q after the data, want a line feed", b)
	}
	return f, nil
}

// readRELPNumber reads up to 9 digits ended by sep.
func readRELPNumber(r *bufio.Reader, sep byte, what string) (uint64, error) {
	var n uint64
	digits := 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, relpEOF(err)
		}
		if b == sep && digits > 0 {
			return n, nil
		}
		if b < '0' || b > '9' || digits == 9 {
			return 0, fmt.Errorf("syslog: RELP frame: bad %s byte %q", what, b)
		}
		n = n*10 + uint64(b-'0')
		digits++
	}
}

// readRELPLength reads DATALEN and the byte after it (a space before data,
// or the line feed of a frame without data).
func readRELPLength(r *bufio.Reader) (n uint64, end byte, err error) {
	digits := 0
	for {
		b, err := r.ReadByte()
		if err != nil {
			return 0, 0, relpEOF(err)
		}
		if (b == ' ' || b == '\n') && digits > 0 {
			return n, b, nil
		}
		if b < '0' || b > '9' || digits == 9 {
			return 0, 0, fmt.Errorf("syslog: RELP frame: bad DATALEN byte %q", b)
		}
		n = n*10 + uint64(b-'0')
		digits++
	}
}

// relpEOF turns an end of stream inside a frame into ErrReceiverClosed.
func relpEOF(err error) error {
	if errors.Is(err, io.EOF) || errors.Is(err, io.ErrUnexpectedEOF) {
		return ErrReceiverClosed
	}
	return err
}

// checkRELPOpen checks the answer to the open command: status 200, and
// syslog among the commands the receiver offers.
func checkRELPOpen(f relpFrame) error {
	if f.cmd != "rsp" || f.txnr != 1 {
		return fmt.Errorf("syslog: RELP open: got %q for TXNR %d, want the answer to TXNR 1", f.cmd, f.txnr)
	}
	if code, text := f.status(); code != 200 {
		return fmt.Errorf("%w the session: %d %s", ErrRELPRefused, code, text)
	}
	for _, line := range bytes.Split(f.data, []byte("\n"))[1:] {
		k, v, _ := bytes.Cut(bytes.TrimSpace(line), []byte("="))
		if string(k) != "commands" {
			continue
		}
		for _, c := range bytes.Split(v, []byte(",")) {
			if string(bytes.TrimSpace(c)) == "syslog" {
				return nil
			}
		}
		return fmt.Errorf("syslog: RELP open: the receiver offers commands %q, not syslog", v)
	}
	return nil // an offer without a command list takes syslog
}
