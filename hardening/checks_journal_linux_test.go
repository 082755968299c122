package hardening

import (
	"context"
	"strings"
	"testing"

	"golang.org/x/sys/unix"
)

func TestJournalLimitCheck(t *testing.T) {
	dir := t.TempDir()
	var st unix.Statfs_t
	if err := unix.Statfs(dir, &st); err != nil {
		t.Fatal(err)
	}
	free := int64(st.Bavail) * st.Bsize
	for _, tc := range []struct {
		name     string
		maxBytes int64
		want     Status
		detail   string
	}{
		{"unset", 0, Warn, "grows until"},
		{"more than the disk", free * 4, Warn, "more than the file system"},
		{"fits", 1 << 20, Pass, "disk_full = block"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			res := JournalLimitCheck(dir, tc.maxBytes, "block").Run(context.Background())
			if len(res) != 1 || res[0].Status != tc.want || !strings.Contains(res[0].Detail, tc.detail) {
				t.Fatalf("got %+v, want %s with %q", res, tc.want, tc.detail)
			}
			if tc.want != Pass && !strings.Contains(res[0].Fix, "max_bytes") {
				t.Errorf("fix %q does not say what to set", res[0].Fix)
			}
		})
	}
	if res := JournalLimitCheck(dir+"/nosuch", 1<<20, "block").Run(context.Background()); res[0].Status != Skip {
		t.Errorf("a state dir that does not exist: got %+v, want skip", res)
	}
}
