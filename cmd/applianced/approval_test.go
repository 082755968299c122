package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/applianced/applianced/internal/config"
)

// TestDevToolsConfigLoads checks that the demo tool's section is a valid
// part of the dev config and names the tool's real loopback URL.
func TestDevToolsConfigLoads(t *testing.T) {
	dir := t.TempDir()
	dv := &devEnv{dir: dir, cfgPath: filepath.Join(dir, "applianced.toml"), cli: "applianced", listen: "127.0.0.1:8443"}
	if err := devTools(t.Context(), dv); err != nil {
		t.Fatalf("devTools: %v", err)
	}
	t.Cleanup(func() {
		for _, c := range dv.cleanup {
			c()
		}
	})
	text := writeDevConfig(t, dv, dv.sections)
	cfg, err := config.Load(dv.cfgPath)
	if err != nil {
		t.Fatalf("the dev config with the demo tool does not load: %v\n%s", err, text)
	}
	if len(cfg.Tools) != 1 || cfg.Tools[0].Name != "tickets" || len(cfg.Tools[0].Routes) != 4 || cfg.Risk.RequestsPerMinute != 60 {
		t.Errorf("got tools %+v risk %+v", cfg.Tools, cfg.Risk)
	}
	key, err := os.ReadFile(filepath.Join(dir, "demo-tool.key"))
	if err != nil || len(key) == 0 {
		t.Fatalf("demo key file: %v", err)
	}
	if strings.Contains(text, string(key)) || strings.Contains(strings.Join(dv.try, "\n"), string(key)) {
		t.Error("the demo tool's key is in the config or the printout")
	}
}
