package audit

import (
	"encoding/binary"
	"fmt"
	"hash/crc32"
	"os"
	"sync"
	"time"

	"golang.org/x/sys/unix"
)

// marker is the durable record of the last sequence number known to be on
// disk, kept in a small file beside the segments. It lets Open and Verify
// tell a journal whose tail was cut from one that simply ended.
//
// It is written after the entries it names are durable, off the append path:
// a background goroutine writes the newest value into one of two slots in
// turn (pwrite + fdatasync), so a crash mid-write leaves the other slot
// intact. It writes at most once per markerInterval: every fdatasync of the
// marker is a cache flush the journal's own fsync would queue behind, so a
// marker that followed every batch would double the flushes a busy journal
// waits for. The marker may therefore lag the journal by up to
// markerInterval of appends, and a cut of only that newest tail is not
// caught by it (where syslog forwarding is on, the forwarded copy still
// has those entries); it never runs ahead of the journal.
type marker struct {
	f *os.File

	mu      sync.Mutex
	cur     markerRec // newest value written or pending
	pending bool
	wake    chan struct{}
	stop    chan struct{}
	stopped chan struct{}
	slot    int
}

type markerRec struct {
	seq  uint64
	hash [32]byte
}

const markerSlot = 64

func openMarker(path string) (*marker, error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return nil, fmt.Errorf("audit: opening journal marker: %w", err)
	}
	m := &marker{f: f, wake: make(chan struct{}, 1), stop: make(chan struct{}), stopped: make(chan struct{})}
	m.cur = readMarker(f)
	go m.loop()
	return m, nil
}

// readMarker returns the valid slot with the higher seq (zero if none).
func readMarker(f *os.File) markerRec {
	var best markerRec
	buf := make([]byte, markerSlot)
	for slot := 0; slot < 2; slot++ {
		n, _ := f.ReadAt(buf, int64(slot*markerSlot))
		if n < 44 {
			continue
		}
		if crc32.ChecksumIEEE(buf[:40]) != binary.BigEndian.Uint32(buf[40:44]) {
			continue
		}
		var r markerRec
		r.seq = binary.BigEndian.Uint64(buf[:8])
		copy(r.hash[:], buf[8:40])
		if r.seq > best.seq {
			best = r
		}
	}
	return best
}

// readMarkerFile reads the marker at path without opening it for writing.
func readMarkerFile(path string) (markerRec, bool) {
	f, err := os.Open(path)
	if err != nil {
		return markerRec{}, false
	}
	defer f.Close()
	return readMarker(f), true
}

func (m *marker) load() markerRec {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.cur
}

func (m *marker) store(seq uint64, hash [32]byte) {
	m.mu.Lock()
	m.cur, m.pending = markerRec{seq, hash}, true
	m.mu.Unlock()
	select {
	case m.wake <- struct{}{}:
	default:
	}
}

// markerInterval is the least time between two marker writes.
const markerInterval = 5 * time.Millisecond

func (m *marker) loop() {
	defer close(m.stopped)
	pause := time.NewTimer(0)
	<-pause.C
	for {
		select {
		case <-m.wake:
			m.flush()
		case <-m.stop:
			m.flush()
			return
		}
		pause.Reset(markerInterval)
		select {
		case <-pause.C:
		case <-m.stop:
			pause.Stop()
			m.flush()
			return
		}
	}
}

func (m *marker) flush() {
	m.mu.Lock()
	if !m.pending {
		m.mu.Unlock()
		return
	}
	rec := m.cur
	m.pending = false
	m.mu.Unlock()
	buf := make([]byte, markerSlot)
	binary.BigEndian.PutUint64(buf[:8], rec.seq)
	copy(buf[8:40], rec.hash[:])
	binary.BigEndian.PutUint32(buf[40:44], crc32.ChecksumIEEE(buf[:40]))
	if _, err := m.f.WriteAt(buf, int64(m.slot*markerSlot)); err != nil {
		return
	}
	if err := unix.Fdatasync(int(m.f.Fd())); err != nil {
		return
	}
	m.slot ^= 1
}

func (m *marker) close() error {
	select {
	case <-m.stop:
	default:
		close(m.stop)
	}
	<-m.stopped
	return m.f.Close()
}
