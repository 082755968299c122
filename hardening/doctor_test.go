package hardening

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"
)

func TestRunSummarizesAndContainsFailures(t *testing.T) {
	checks := []Check{
		{Name: "ok", Run: func(context.Context) []Result { return []Result{{Name: "a", Status: Pass, Detail: "fine"}} }},
		{Name: "two", Run: func(context.Context) []Result {
			return []Result{{Name: "b", Status: Warn, Detail: "meh", Fix: "do x"}, {Name: "c", Status: Skip, Detail: "n/a"}}
		}},
		{Name: "boom", Run: func(context.Context) []Result { panic("nil map") }},
		{Name: "silent", Run: func(context.Context) []Result { return nil }},
		{Name: "slow", Run: func(ctx context.Context) []Result {
			<-ctx.Done()
			return []Result{{Name: "slow", Status: Pass, Detail: "late"}}
		}},
	}
	rep := Run(context.Background(), checks, 50*time.Millisecond)
	want := []struct {
		name   string
		status Status
	}{{"a", Pass}, {"b", Warn}, {"c", Skip}, {"boom", Fail}, {"silent", Fail}, {"slow", Warn}}
	if len(rep.Results) != len(want) {
		t.Fatalf("got %d results, want %d: %+v", len(rep.Results), len(want), rep.Results)
	}
	for i, w := range want {
		if got := rep.Results[i]; got.Name != w.name || got.Status != w.status {
			t.Errorf("result %d got %s/%s, want %s/%s", i, got.Name, got.Status, w.name, w.status)
		}
	}
	if got := rep.Summary; got != (Summary{Pass: 1, Warn: 2, Fail: 2, Skip: 1}) {
		t.Errorf("summary got %+v", got)
	}
	if rep.OK() {
		t.Error("OK got true with failures, want false")
	}
}

func TestReportOutput(t *testing.T) {
	rep := Run(context.Background(), []Check{{Name: "x", Run: func(context.Context) []Result {
		return []Result{
			{Name: "sysctl kernel.dmesg_restrict", Status: Warn, Detail: "kernel.dmesg_restrict = 0:\nmultiline", Fix: "sysctl -w kernel.dmesg_restrict=1"},
			{Name: "clock", Status: Pass, Detail: "synchronized", Fix: "never shown"},
		}
	}}}, 0)
	var text bytes.Buffer
	if err := rep.WriteText(&text); err != nil {
		t.Fatal(err)
	}
	out := text.String()
	for _, want := range []string{"WARN  sysctl kernel.dmesg_restrict  kernel.dmesg_restrict = 0: multiline", "fix: sysctl -w kernel.dmesg_restrict=1", "1 pass, 1 warn, 0 fail, 0 skipped"} {
		if !strings.Contains(out, want) {
			t.Errorf("text output lacks %q:\n%s", want, out)
		}
	}
	if strings.Contains(out, "never shown") {
		t.Errorf("text output shows a fix for a pass:\n%s", out)
	}
	var js bytes.Buffer
	if err := rep.WriteJSON(&js); err != nil {
		t.Fatal(err)
	}
	var back Report
	if err := json.Unmarshal(js.Bytes(), &back); err != nil {
		t.Fatal(err)
	}
	if back.Results[0].Status != Warn || back.Results[0].Fix == "" || back.Summary.Warn != 1 {
		t.Errorf("JSON round trip got %+v", back)
	}
}
