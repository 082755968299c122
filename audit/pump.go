package audit

import "context"

// Pump reads r in its own goroutine into entries (buffered to buf) until
// ctx ends, stop is called, or Next fails; that failure arrives on errs.
// stop ends the goroutine, waits for it and closes r; call it exactly once.
// Followers use it to wait on new entries and on their own events at once.
func (r *Reader) Pump(ctx context.Context, buf int) (entries <-chan Entry, errs <-chan error, stop func()) {
	pctx, cancel := context.WithCancel(ctx)
	ch := make(chan Entry, buf)
	perr := make(chan error, 1)
	pumped := make(chan struct{})
	go func() {
		defer close(pumped)
		for {
			e, err := r.Next(pctx)
			if err != nil {
				perr <- err
				return
			}
			select {
			case ch <- e:
			case <-pctx.Done():
				return
			}
		}
	}()
	return ch, perr, func() {
		cancel()
		<-pumped
		r.Close()
	}
}
