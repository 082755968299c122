package syslog

import (
	"bytes"
	"flag"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/applianced/applianced/audit"
)

var update = flag.Bool("update", false, "write the golden files of the wire format")

// TestWireBodyGolden pins the message bodies auditors' tools and the Wazuh
// decoder read: a whole event, its parts, a stub, and an entry of a
// journal made before chain ids (no audit_chain), as the newline framing
// of the wazuh format writes them.
func TestWireBodyGolden(t *testing.T) {
	at := time.Date(2026, 11, 25, 23, 0, 0, 0, time.UTC)
	rs := chain(t,
		&audit.Event{Time: at, Type: "auth.login", Outcome: audit.OutcomeDenied, Actor: audit.Actor{User: "alice"}, Reason: "invalid credentials"},
		&audit.Event{Time: at, Type: "tool.call", Outcome: audit.OutcomeSuccess, Actor: audit.Actor{Agent: "bot"}, Target: "tickets",
			Details: map[string]string{"path": "/tickets/\"42\"\n" + string(bytes.Repeat([]byte("x"), 200))}})
	legacy := rs[0]
	legacy.Chain = ""
	var out []byte
	for _, tc := range []struct {
		r        record
		oversize string
	}{{rs[0], OversizeSplit}, {rs[1], OversizeSplit}, {rs[1], OversizeRefuse}, {legacy, OversizeSplit}} {
		fm := newFormatter(Target{Address: "tcp://x:1", Format: FormatWazuh, Framing: FramingNewline, MaxMessageBytes: 480,
			Oversize: tc.oversize, Hostname: "host"}, endpoint{scheme: "tcp"})
		var err error
		r := tc.r
		if out, _, err = fm.appendMessages(out, nil, &r); err != nil {
			t.Fatal(err)
		}
	}
	// The header's time is local and its pid varies: the bodies are what
	// is pinned.
	var bodies []byte
	for _, l := range bytes.SplitAfter(out, []byte("\n")) {
		if i := bytes.Index(l, []byte(bodyPrefix)); i >= 0 {
			bodies = append(bodies, l[i:]...)
		}
	}
	path := filepath.Join("testdata", "wire-bodies.golden")
	if *update {
		if err := os.WriteFile(path, bodies, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(bodies, want) {
		t.Errorf("got bodies:\n%s\nwant (%s):\n%s", bodies, path, want)
	}
}
