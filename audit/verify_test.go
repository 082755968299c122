package audit

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// Ways to hide a cut or deleted entries from VerifyDir that leave the
// chain itself intact: the marker file removed, and a zero byte written
// into an entry (everything after it would read as the zeros that end a
// segment).
func TestVerifyCatchesAHiddenTail(t *testing.T) {
	fill := func(t *testing.T) string {
		dir := t.TempDir()
		j := openTest(t, dir, nil)
		for i := range 20 {
			if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
				t.Fatal(err)
			}
		}
		j.Close()
		return dir
	}
	t.Run("marker removed", func(t *testing.T) {
		dir := fill(t)
		if err := os.Remove(filepath.Join(dir, "head")); err != nil {
			t.Fatal(err)
		}
		rep, err := VerifyDir(dir)
		if err != nil || rep.OK() || !strings.Contains(rep.Problems[0].Reason, "marker file (head) is missing") {
			t.Fatalf("got %+v, %v; want the missing marker named", rep, err)
		}
	})
	t.Run("zero byte inside an entry", func(t *testing.T) {
		dir := fill(t)
		seg := filepath.Join(dir, segName(1))
		b, err := os.ReadFile(seg)
		if err != nil {
			t.Fatal(err)
		}
		lines := bytes.SplitAfter(b, []byte("\n"))
		b[len(bytes.Join(lines[:1+10], nil))+5] = 0 // inside seq 11
		if err := os.WriteFile(seg, b, 0o600); err != nil {
			t.Fatal(err)
		}
		rep, err := VerifyDir(dir)
		if err != nil || rep.OK() {
			t.Fatalf("got %+v, %v; want a problem", rep, err)
		}
	})
	t.Run("entries up to the marker rewritten", func(t *testing.T) {
		dir := fill(t)
		m, _ := readMarkerFile(filepath.Join(dir, "head"))
		f, err := os.OpenFile(filepath.Join(dir, "head"), os.O_RDWR, 0)
		if err != nil {
			t.Fatal(err)
		}
		m.hash[0] ^= 1 // as a rewrite leaves it: another chain hash at that seq
		var buf [markerSlot]byte
		binary.BigEndian.PutUint64(buf[:8], m.seq)
		copy(buf[8:40], m.hash[:])
		binary.BigEndian.PutUint32(buf[40:44], crc32.ChecksumIEEE(buf[:40]))
		for slot := range 2 {
			if _, err := f.WriteAt(buf[:], int64(slot*markerSlot)); err != nil {
				t.Fatal(err)
			}
		}
		f.Close()
		rep, err := VerifyDir(dir)
		if err != nil || rep.OK() || !strings.Contains(rep.Problems[0].Reason, "rewritten") {
			t.Fatalf("got %+v, %v; want the marker's hash mismatch named", rep, err)
		}
	})
}

// A zero byte written into an entry, and the marker removed, make Open cut
// that entry and every one after it, as it cuts a crash's torn line; whole
// entries cut that way are recorded (audit.tamper), not dropped in silence.
func TestOpenRecordsWholeEntriesItCuts(t *testing.T) {
	dir := t.TempDir()
	j := openTest(t, dir, nil)
	for i := range 20 {
		if _, err := j.Append(context.Background(), testEvent(i)); err != nil {
			t.Fatal(err)
		}
	}
	j.Close()
	seg := filepath.Join(dir, segName(1))
	b, err := os.ReadFile(seg)
	if err != nil {
		t.Fatal(err)
	}
	lines := bytes.SplitAfter(b, []byte("\n"))
	b[len(bytes.Join(lines[:1+10], nil))+5] = 0 // inside seq 11
	if err := os.WriteFile(seg, b, 0o600); err != nil {
		t.Fatal(err)
	}
	// With the marker in place Open refuses (ErrTruncated); without it,
	// it cannot tell a crash from this.
	if err := os.Remove(filepath.Join(dir, "head")); err != nil {
		t.Fatal(err)
	}
	j2, err := Open(dir, nil)
	if err != nil {
		t.Fatal(err)
	}
	defer j2.Close()
	if j2.LastSeq() != 11 {
		t.Fatalf("last seq %d, want 10 kept and the record of the cut as 11", j2.LastSeq())
	}
	r, err := j2.Reader(11)
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	e, err := r.Next(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if e.Event.Type != "audit.tamper" || e.Event.Details["entries_cut"] != "9" || e.Event.Details["first_seq_cut"] != "12" {
		t.Errorf("got %+v, want audit.tamper naming the 9 entries from seq 12 that were cut", e.Event)
	}
}
