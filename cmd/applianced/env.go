package main

import (
	"context"
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"

	"github.com/applianced/applianced/internal/admin"
	"github.com/applianced/applianced/internal/config"
)

// env is what a verb gets from the process: standard streams and the
// environment, so tests can run verbs in-process.
type env struct {
	stdin          io.Reader
	stdout, stderr io.Writer
	getenv         func(string) string
}

func newEnv() *env {
	return &env{stdin: os.Stdin, stdout: os.Stdout, stderr: os.Stderr, getenv: os.Getenv}
}

// flags returns a flag set for a verb whose -h prints its usage and
// examples. Every verb takes --config (default $APPLIANCED_CONFIG or
// /etc/applianced/applianced.toml).
func (e *env) flags(name, argsUsage, about string, examples ...string) (*flag.FlagSet, *string) {
	fs := flag.NewFlagSet(name, flag.ContinueOnError)
	fs.SetOutput(e.stderr)
	def := e.getenv("APPLIANCED_CONFIG")
	if def == "" {
		def = config.DefaultPath
	}
	cfg := fs.String("config", def, "config `FILE` ($APPLIANCED_CONFIG)")
	fs.Usage = func() {
		fmt.Fprintf(e.stderr, "Usage: applianced %s [flags] %s\n\n%s\n\nFlags:\n", name, argsUsage, about)
		fs.PrintDefaults()
		if len(examples) > 0 {
			fmt.Fprintln(e.stderr, "\nExamples:")
			for _, ex := range examples {
				fmt.Fprintln(e.stderr, "  "+ex)
			}
		}
	}
	return fs, cfg
}

// parse parses args and returns the exit code to use when it fails
// (exitOK after -h, exitUsage otherwise) and whether to go on.
func parse(fs *flag.FlagSet, args []string) (int, bool) {
	if err := fs.Parse(args); err != nil {
		if errors.Is(err, flag.ErrHelp) {
			return exitOK, false
		}
		return exitUsage, false
	}
	return 0, true
}

// wantArgs checks the count of positional arguments.
func (e *env) wantArgs(fs *flag.FlagSet, n int) bool {
	if fs.NArg() != n {
		fmt.Fprintf(e.stderr, "applianced %s: want %d argument(s), got %d\n", fs.Name(), n, fs.NArg())
		fs.Usage()
		return false
	}
	return true
}

// parseArgs parses args and checks the count of positional arguments. It
// returns the exit code to use when either fails and whether to go on.
func (e *env) parseArgs(fs *flag.FlagSet, args []string, n int) (int, bool) {
	if code, ok := parse(fs, args); !ok {
		return code, false
	}
	if !e.wantArgs(fs, n) {
		return exitUsage, false
	}
	return 0, true
}

// adminClient returns a client for the admin socket named in the config
// file. Only [server] admin_socket is needed, so a config with problems in
// other sections still lets the admin reach the daemon.
func (e *env) adminClient(cfgPath string) (*admin.Client, error) {
	sock, err := config.AdminSocket(cfgPath)
	if err != nil {
		return nil, err
	}
	return admin.NewClient(sock), nil
}

// fail prints an error the way every verb does and returns exitFailure.
func (e *env) fail(verb string, err error) int {
	var ae *admin.Error
	if errors.As(err, &ae) && ae.Status == 403 {
		fmt.Fprintf(e.stderr, "applianced %s: %s\n", verb, ae.Error())
		return exitFailure
	}
	fmt.Fprintf(e.stderr, "applianced %s: %v\n", verb, err)
	return exitFailure
}

// printJSON writes v indented, for --json.
func (e *env) printJSON(v any) {
	enc := json.NewEncoder(e.stdout)
	enc.SetIndent("", "  ")
	_ = enc.Encode(v)
}

// show runs one admin call into out and prints the answer: indented JSON
// with asJSON, else whatever text prints. It returns the verb's exit code.
func (e *env) show(ctx context.Context, cfgPath, verb, method, path string, in, out any, asJSON bool, text func()) int {
	if err := e.call(ctx, cfgPath, method, path, in, out); err != nil {
		return e.fail(verb, err)
	}
	if asJSON {
		e.printJSON(out)
		return exitOK
	}
	text()
	return exitOK
}

// call runs one admin verb against the daemon.
func (e *env) call(ctx context.Context, cfgPath, method, path string, in, out any) error {
	c, err := e.adminClient(cfgPath)
	if err != nil {
		return err
	}
	return c.Call(ctx, method, path, in, out)
}
