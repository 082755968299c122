package syslog

import (
	"context"
	"testing"
	"time"

	"github.com/applianced/applianced/internal/testenv/rsyslog"
)

// backlog is 60 s of a busy appliance at 1,000 events/s.
const backlog = 60 * 1000

// benchmarkDrain measures how long a fresh target takes to receive a 60 s
// backlog from the journal (ns/op) and the delivery rate (events/s): a
// real rsyslog receiver writing to a file, cursor confirmation included.
func benchmarkDrain(b *testing.B, input, scheme string) {
	srv := rsyslog.Start(b, rsyslog.Options{Input: input})
	j := openJournal(b)
	if err := appendN(b, j, backlog, 256); err != nil {
		b.Fatal(err)
	}
	target := Target{Address: scheme + "://" + srv.Addr, CAFile: srv.CAFile}
	if scheme == "tls" {
		target.ServerName = "localhost"
	}
	last := j.LastSeq()
	b.ResetTimer()
	var total time.Duration
	for i := 0; i < b.N; i++ {
		start := time.Now()
		f, err := New(j, []Target{target}, &Options{Dir: b.TempDir(), Logger: quietLogger(), Settle: 10 * time.Millisecond})
		if err != nil {
			b.Fatal(err)
		}
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { f.Run(ctx); close(done) }()
		fctx, fcancel := context.WithTimeout(ctx, 5*time.Minute)
		if err := f.Flush(fctx); err != nil {
			b.Fatal(err)
		}
		total += time.Since(start)
		fcancel()
		cancel()
		<-done
	}
	b.ReportMetric(float64(last)*float64(b.N)/total.Seconds(), "events/s")
}

func BenchmarkDrainBacklogTCP(b *testing.B) { benchmarkDrain(b, rsyslog.InputTCP, "tcp") }
func BenchmarkDrainBacklogTLS(b *testing.B) { benchmarkDrain(b, rsyslog.InputTLS, "tls") }

// BenchmarkFormatRFC5424 is the formatter alone, per event.
func BenchmarkFormatRFC5424(b *testing.B) {
	rs := chain(b, testEvent(1))
	f := newFormatter(Target{Address: "tcp://x:1"}, endpoint{scheme: "tcp"})
	var buf []byte
	var ends []int
	b.ReportAllocs()
	for i := 0; i < b.N; i++ {
		buf, ends, _ = f.appendMessages(buf[:0], ends[:0], &rs[0])
	}
	b.SetBytes(int64(len(buf)))
}
