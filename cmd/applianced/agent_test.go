package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"text/template"

	"github.com/applianced/applianced/internal/config"
)

// TestDevBrokerConfigLoads checks that the demo roles and agent, with the
// demo directory's section before them, are a valid part of the dev config.
func TestDevBrokerConfigLoads(t *testing.T) {
	dir := t.TempDir()
	dv := &devEnv{dir: dir, cfgPath: filepath.Join(dir, "applianced.toml"), cli: "applianced", listen: "127.0.0.1:8443"}
	t.Cleanup(func() {
		for _, c := range dv.cleanup {
			c()
		}
	})
	for _, step := range []func() error{
		func() error { return devLDAP(t.Context(), dv) },
		func() error { return devBroker(t.Context(), dv) },
	} {
		if err := step(); err != nil {
			t.Fatal(err)
		}
	}
	var b strings.Builder
	template.Must(template.New("dev").Parse(devBaseConfig)).Execute(&b, map[string]string{"Listen": dv.listen, "Dir": dir})
	for _, s := range dv.sections {
		b.WriteString("\n" + s + "\n")
	}
	if err := os.WriteFile(dv.cfgPath, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.Load(dv.cfgPath)
	if err != nil {
		t.Fatalf("the dev config does not load: %v\n%s", err, b.String())
	}
	bc := brokerConfig(cfg)
	if errs := bc.Validate(); len(errs) > 0 {
		t.Fatalf("broker config: %v", errs)
	}
	if len(bc.Agents) != 1 || bc.Agents[0].UnixUID == nil || *bc.Agents[0].UnixUID != os.Getuid() {
		t.Fatalf("the demo agent is not this uid: %+v", bc.Agents)
	}
	if got := issuer(cfg); got != "https://127.0.0.1:8443" {
		t.Fatalf("issuer: got %q", got)
	}
}
