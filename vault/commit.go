package vault

import (
	"errors"

	bolt "go.etcd.io/bbolt"
)

// Writes share commits (group commit). bbolt's own Batch waits on a timer
// for company, and Go's timers sleep about a millisecond at the least, which
// made a lone write six times slower than a plain Update. Here one committer
// goroutine takes every write queued while the previous commit was being
// fsynced and runs them in one transaction: a lone writer pays one commit,
// and concurrent writers share them.

// maxGroup bounds the writes of one commit.
const maxGroup = 512

// writeReq is one write waiting for a commit.
type writeReq struct {
	db   *bolt.DB // the database the writer saw under v.mu; the same for all queued writes
	fn   func(*bolt.Tx) error
	err  error
	done chan struct{}
}

// write runs fn in a read-write transaction shared with concurrent writers
// and returns once that transaction is durable. The caller holds v.mu
// shared, so db cannot be swapped or closed meanwhile. fn may run more than
// once (when another write of its group fails) and must be idempotent.
func (v *Vault) write(db *bolt.DB, fn func(*bolt.Tx) error) error {
	r := &writeReq{db: db, fn: fn, done: make(chan struct{})}
	select {
	case v.writes <- r:
	case <-v.quit:
		return ErrClosed
	}
	<-r.done
	return r.err
}

// committer runs until Close. Close takes v.mu exclusively, so no writer is
// waiting when quit closes.
func (v *Vault) committer() {
	group := make([]*writeReq, 0, maxGroup)
	for {
		select {
		case <-v.quit:
			return
		case r := <-v.writes:
			group = append(group[:0], r)
		}
	more:
		for len(group) < maxGroup {
			select {
			case r := <-v.writes:
				group = append(group, r)
			default:
				break more
			}
		}
		commitGroup(group)
	}
}

// errFailedIn marks which write of a group failed.
type errFailedIn struct {
	i   int
	err error
}

func (e *errFailedIn) Error() string { return e.err.Error() }

// commitGroup commits the writes of group in one transaction. A write that
// fails is answered with its error and the others are committed without it.
func commitGroup(group []*writeReq) {
	for len(group) > 0 {
		err := group[0].db.Update(func(tx *bolt.Tx) error {
			for i, r := range group {
				if err := r.fn(tx); err != nil {
					return &errFailedIn{i: i, err: err}
				}
			}
			return nil
		})
		var f *errFailedIn
		if errors.As(err, &f) {
			r := group[f.i]
			r.err = f.err
			close(r.done)
			group = append(group[:f.i:f.i], group[f.i+1:]...)
			continue
		}
		for _, r := range group {
			r.err = err
			close(r.done)
		}
		return
	}
}
