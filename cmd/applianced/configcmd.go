package main

import (
	"context"
	"errors"
	"fmt"
	"runtime"
	"runtime/debug"

	"github.com/applianced/applianced/internal/config"
)

// version is set at build time: -ldflags "-X main.version=1.2.3".
var version = "0.1.0-dev"

func cmdVersion(ctx context.Context, e *env, args []string) int {
	fs, _ := e.flags("version", "", "Print the version, the commit it was built from and the Go version.", "applianced version")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 0) {
		return exitUsage
	}
	commit, dirty := "unknown", ""
	if bi, ok := debug.ReadBuildInfo(); ok {
		for _, s := range bi.Settings {
			switch s.Key {
			case "vcs.revision":
				commit = s.Value
			case "vcs.modified":
				if s.Value == "true" {
					dirty = " (modified)"
				}
			}
		}
	}
	fmt.Fprintf(e.stdout, "applianced %s\ncommit %s%s\n%s %s/%s\n", version, commit, dirty, runtime.Version(), runtime.GOOS, runtime.GOARCH)
	return exitOK
}

func cmdConfigCheck(ctx context.Context, e *env, args []string) int {
	fs, cfgPath := e.flags("config check", "", "Validate the config file strictly: unknown keys, wrong types and bad values are\n"+
		"reported with file, line and key, all at once. Exit 0 when the file is valid.",
		"applianced config check", "applianced config check --config /etc/applianced/applianced.toml")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	if !e.wantArgs(fs, 0) {
		return exitUsage
	}
	cfg, err := config.Load(*cfgPath)
	if err != nil {
		var ce *config.Error
		if errors.As(err, &ce) {
			for _, p := range ce.Problems {
				fmt.Fprintln(e.stderr, p.String())
			}
			fmt.Fprintf(e.stderr, "%d error(s); fix them and run `applianced config check` again\n", len(ce.Problems))
			return exitFailure
		}
		return e.fail("config check", err)
	}
	fmt.Fprintf(e.stdout, "%s: ok (%d roles, %d agents, %d tools, %d policies, %d syslog targets)\n",
		cfg.Path, len(cfg.Roles), len(cfg.Agents), len(cfg.Tools), len(cfg.Policies), len(cfg.Audit.Syslog))
	return exitOK
}
