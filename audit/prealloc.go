package audit

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"io"
	"math"
	"os"
	"sync"
	"sync/atomic"
)

// Writing ahead.
//
// An fdatasync after an append that grows the file must also make the new
// size durable: a second round trip to the disk (a synchronous inode write
// on ext4 without a journal, a journal commit with one). After overwriting
// blocks the file already has, fdatasync writes only the data. So the
// journal keeps zeros written ahead of its end in the segment being
// written, and entries overwrite them: on this machine's disk that cut the
// fdatasync after an entry from about 140 µs to about 95 µs (p50), and the
// CPU it costs by a fifth.
//
// A maintenance goroutine writes the zeros, a chunk at a time, off the
// append path, and trims a finished segment back to its entries if zeros
// follow them; Close trims the last one. It writes and syncs through its own open file, so a
// write-back error it sees is also reported to the writer's fdatasync (the
// kernel reports such an error once to every open file, not once per file).
//
// On disk, the segment being written (and, after a crash, the one before
// it) therefore ends in zero bytes. No entry line holds a zero byte (entries
// are hex and JSON), so every reader takes a zero byte as the end of the
// segment's entries (readLine).
type ahead struct {
	size  int64 // how far ahead of the entries to keep zeros; 0: never
	chunk int64 // written per step
	limit int64 // write zeros only below this offset (Options.SegmentBytes)

	mu      sync.Mutex // held to write at or beyond zeroEnd, and to change path
	path    string     // the segment being written
	zeroEnd atomic.Int64
	dataEnd atomic.Int64 // the writer's end of entries, to know how far to go
	gen     uint64       // changes with path
	trim    []trimJob    // finished segments to cut back to their entries

	kick          chan struct{}
	stop, stopped chan struct{}
}

// trimJob is a finished segment: the writer's file and its entries' size.
type trimJob struct {
	f    *os.File
	size int64
}

const (
	aheadBytes = 4 << 20 // zeros kept ahead of the entries
	aheadChunk = 1 << 20 // written per step
)

// startAhead starts the maintenance goroutine for the segment being
// written: a.path, whose file is a.zeroEnd bytes long.
func (j *Journal) startAhead() {
	a := &j.ahead
	a.size, a.limit, a.chunk = j.opts.aheadBytes(), j.opts.SegmentBytes, j.opts.aheadChunk
	if a.chunk <= 0 {
		a.chunk = aheadChunk
	}
	a.kick, a.stop, a.stopped = make(chan struct{}, 1), make(chan struct{}), make(chan struct{})
	a.dataEnd.Store(j.size)
	go j.maintain()
	j.kickAhead()
}

func (o *Options) aheadBytes() int64 {
	if o.noAhead {
		return 0
	}
	return aheadBytes
}

func (j *Journal) kickAhead() {
	select {
	case j.ahead.kick <- struct{}{}:
	default:
	}
}

// wrote tells the maintenance goroutine where the entries now end, and
// wakes it when the zeros ahead run short.
func (j *Journal) wrote(dataEnd int64) {
	a := &j.ahead
	a.dataEnd.Store(dataEnd)
	if a.size > 0 && a.zeroEnd.Load()-dataEnd < a.size/2 && a.zeroEnd.Load() < a.limit {
		j.kickAhead()
	}
}

// write writes b at the writer's offset, which is j.size. Below zeroEnd it
// needs no lock: the maintenance goroutine only writes at zeroEnd or
// beyond, and zeroEnd only grows while the writer does not hold the lock.
func (j *Journal) write(b []byte) (int, error) {
	a := &j.ahead
	end := j.size + int64(len(b))
	if end <= a.zeroEnd.Load() {
		return j.f.Write(b)
	}
	a.mu.Lock()
	defer a.mu.Unlock()
	n, err := j.f.Write(b)
	if e := j.size + int64(n); e > a.zeroEnd.Load() {
		a.zeroEnd.Store(e)
	}
	return n, err
}

// cut truncates the segment being written to j.size (a failed batch), and
// the zeros ahead with it.
func (j *Journal) cut() error {
	a := &j.ahead
	a.mu.Lock()
	defer a.mu.Unlock()
	if err := j.f.Truncate(j.size); err != nil {
		return err
	}
	a.zeroEnd.Store(j.size)
	return nil
}

// switchTo makes the new segment f (at path, size bytes of header) the one
// written, and queues the old one to be trimmed to its entries if zeros
// follow them. (Zeros stop at SegmentBytes, where rotation starts, so that
// is only when the old segment came from a run with larger segments.)
func (j *Journal) switchTo(f *os.File, path string, size int64) {
	a := &j.ahead
	a.mu.Lock()
	if j.f != nil {
		if a.zeroEnd.Load() > j.size {
			a.trim = append(a.trim, trimJob{j.f, j.size})
		} else {
			j.f.Close()
		}
	}
	j.f, j.size = f, size
	a.path, a.gen = path, a.gen+1
	a.zeroEnd.Store(size)
	a.dataEnd.Store(size)
	a.mu.Unlock()
	j.kickAhead()
}

// maintain trims finished segments and writes zeros ahead of the entries.
func (j *Journal) maintain() {
	a := &j.ahead
	defer close(a.stopped)
	var (
		f      *os.File     // own open file of path
		path   string       // a.path when f was opened
		gen    = ^uint64(0) // a.gen that f is for
		zeros  []byte
		failed bool // this segment: stop writing ahead after an error
	)
	defer func() {
		if f != nil {
			f.Close()
		}
	}()
	for {
		select {
		case <-a.stop:
			return
		case <-a.kick:
		}
		a.mu.Lock()
		jobs := a.trim
		a.trim = nil
		a.mu.Unlock()
		for _, t := range jobs {
			if err := j.trim(t); err != nil {
				j.opts.Logger.Warn("audit: trimming a finished segment", "err", err)
			}
		}
		for a.size > 0 {
			select {
			case <-a.stop:
				return
			default:
			}
			// The room is computed without a.mu held (the two locks are
			// never held together) and used only if the segment written is
			// still the one it was computed for.
			a.mu.Lock()
			g0 := a.gen
			a.mu.Unlock()
			room := j.aheadRoom()
			a.mu.Lock()
			if a.gen != g0 {
				a.mu.Unlock()
				continue
			}
			if a.gen != gen {
				if f != nil {
					f.Close()
				}
				gen, path, failed = a.gen, a.path, false
				var err error
				if f, err = os.OpenFile(path, os.O_WRONLY, 0); err != nil {
					a.mu.Unlock()
					j.opts.Logger.Warn("audit: cannot write zeros ahead of the journal; appends go on without them", "segment", path, "err", err)
					f, failed = nil, true
					break
				}
			}
			end := a.zeroEnd.Load()
			want := min(a.dataEnd.Load()+a.size, a.limit, room)
			if failed || end >= want {
				a.mu.Unlock()
				break
			}
			if zeros == nil {
				zeros = make([]byte, a.chunk)
			}
			n, err := f.WriteAt(zeros[:min(int64(len(zeros)), want-end)], end)
			a.zeroEnd.Store(end + int64(n))
			a.mu.Unlock()
			if err != nil {
				// Most likely a full disk. The writer meets the same
				// condition itself and applies the journal's policy.
				j.opts.Logger.Warn("audit: cannot write zeros ahead of the journal; appends go on without them", "segment", path, "err", err)
				failed = true
				continue
			}
			if err := f.Sync(); err != nil {
				// The file's pages could not all be written back: the
				// writer's next fdatasync reports the same error, and the
				// journal refuses appends from then on, as after any failed
				// fsync.
				j.opts.Logger.Error("audit: syncing the zeros ahead of the journal failed; the journal will refuse appends", "segment", path, "err", err)
				failed = true
			}
		}
	}
}

// aheadRoom is how long the segment being written may grow, zeros
// included, for all segments to stay within Options.MaxBytes.
func (j *Journal) aheadRoom() int64 {
	room := j.maxBytes.Load()
	if room <= 0 {
		return math.MaxInt64
	}
	j.mu.Lock()
	defer j.mu.Unlock()
	for _, s := range j.segments[:max(len(j.segments)-1, 0)] {
		room -= s.size
	}
	return room
}

// trim cuts a finished segment back to its entries and closes it. Its
// entries are durable already; if this fails, the segment keeps zeros at its
// end, which readers take as its end.
func (j *Journal) trim(t trimJob) error {
	err := t.f.Truncate(t.size)
	if err == nil {
		err = t.f.Sync()
	}
	if err != nil {
		err = fmt.Errorf("%s: %w", t.f.Name(), err)
	}
	return errors.Join(err, t.f.Close())
}

// stopAhead stops the maintenance goroutine and trims what it had queued.
func (j *Journal) stopAhead() {
	a := &j.ahead
	if a.stop == nil {
		return
	}
	close(a.stop)
	<-a.stopped
	for _, t := range a.trim {
		if err := j.trim(t); err != nil {
			j.opts.Logger.Warn("audit: trimming a finished segment", "err", err)
		}
	}
	a.trim = nil
}

// errPadding is readLine's report of a zero byte: the segment's entries end
// where the line began, or, if the line is not empty, within it (a torn
// entry).
var errPadding = errors.New("audit: end of entries (zero bytes follow)")

// readLine returns the next line with its newline, or what there is of it
// with io.EOF at the end of the file or errPadding at a zero byte.
func readLine(br *bufio.Reader) ([]byte, error) {
	var line []byte
	for {
		chunk, err := br.ReadSlice('\n')
		if i := bytes.IndexByte(chunk, 0); i >= 0 {
			return append(line, chunk[:i]...), errPadding
		}
		line = append(line, chunk...)
		if err != bufio.ErrBufferFull {
			return line, err
		}
	}
}

// endOfData reports whether err from readLine means the entries ended
// cleanly: nothing of another line, then the end of the file or zeros.
func endOfData(line []byte, err error) bool {
	return len(line) == 0 && (err == io.EOF || errors.Is(err, errPadding))
}

// onlyZeros reports whether the file at path holds nothing but zero bytes
// from off to its end.
func onlyZeros(path string, off int64) (bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return false, fmt.Errorf("audit: %w", err)
	}
	defer f.Close()
	buf := make([]byte, 256<<10)
	for {
		n, err := f.ReadAt(buf, off)
		for _, c := range buf[:n] {
			if c != 0 {
				return false, nil
			}
		}
		off += int64(n)
		if err == io.EOF {
			return true, nil
		}
		if err != nil {
			return false, fmt.Errorf("audit: reading %s: %w", path, err)
		}
	}
}
