package main

import (
	"context"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strings"
	"text/template"

	"github.com/applianced/applianced/internal/config"
	"github.com/applianced/applianced/internal/procs"
)

// devEnv is the demo appliance `applianced dev` builds: a config file in a
// temporary dir, the in-process services each area adds, and the lines of
// the "what you can try" printout.
type devEnv struct {
	dir     string
	cfgPath string
	cli     string // how to invoke the CLI in printed commands
	listen  string

	sections []string          // TOML appended to the base config by the areas
	users    map[string]string // demo directory users and their passwords
	try      []string          // printout lines, in order
	cleanup  []func()
}

// devSteps let each area add to the demo before the daemon starts: start an
// in-process service, append config, add lines to the printout. They run in
// this order.
var devSteps = []func(ctx context.Context, dv *devEnv) error{devLDAP, devBroker, devTools}

// addTry adds a titled block of commands to the printout.
func (dv *devEnv) addTry(title string, cmds ...string) {
	dv.try = append(dv.try, "", "# "+title)
	dv.try = append(dv.try, cmds...)
}

const devBaseConfig = `# applianced dev: a demo config on loopback. Nothing here is for production.
[server]
listen = "{{.Listen}}"
state_dir = "{{.Dir}}/state"
admin_socket = "{{.Dir}}/admin.sock"
agent_socket = "{{.Dir}}/agent.sock"
tls_cert = "{{.Dir}}/tls/api.pem"
tls_key = "{{.Dir}}/tls/api.key"
log_level = "info"

[vault]
master_key_file = "{{.Dir}}/master.key"

[audit]
segment_bytes = "8MB"
`

func cmdDev(ctx context.Context, e *env, args []string) int {
	fs, _ := e.flags("dev", "", "Run the whole appliance as a demo on loopback, as your own user: a temporary state\n"+
		"dir and master key, an in-process LDAP directory with demo users, a demo tool that\n"+
		"needs a secret the agent never sees, and the API on 127.0.0.1. No root, no AD, no\n"+
		"firewall changes. It prints the commands to try; Ctrl-C stops it and deletes the dir.",
		"applianced dev", "applianced dev --keep")
	keep := fs.Bool("keep", false, "keep the temporary dir on exit")
	listen := fs.String("listen", "127.0.0.1:8443", "API `ADDRESS` (a free port is chosen if it is taken)")
	if code, ok := parse(fs, args); !ok {
		return code
	}
	dir, err := os.MkdirTemp("", "applianced-dev-")
	if err != nil {
		return e.fail("dev", err)
	}
	dv := &devEnv{dir: dir, cfgPath: filepath.Join(dir, "applianced.toml"), cli: cliName(), listen: freeAddr(*listen)}
	defer func() {
		for i := len(dv.cleanup) - 1; i >= 0; i-- {
			dv.cleanup[i]()
		}
		if *keep {
			fmt.Fprintf(e.stderr, "kept %s\n", dir)
		} else {
			os.RemoveAll(dir)
		}
	}()
	for _, step := range devSteps {
		if err := step(ctx, dv); err != nil {
			return e.fail("dev", err)
		}
	}
	var b strings.Builder
	template.Must(template.New("dev").Parse(devBaseConfig)).Execute(&b, map[string]string{"Listen": dv.listen, "Dir": dir})
	for _, s := range dv.sections {
		b.WriteString("\n" + s + "\n")
	}
	if err := os.WriteFile(dv.cfgPath, []byte(b.String()), 0o600); err != nil {
		return e.fail("dev", err)
	}
	cfg, err := config.Load(dv.cfgPath)
	if err != nil {
		return e.fail("dev", fmt.Errorf("the demo config is invalid (a bug): %w", err))
	}
	quiet := &env{stdin: e.stdin, stdout: new(strings.Builder), stderr: e.stderr, getenv: func(string) string { return "" }}
	if err := initState(quiet, cfg); err != nil {
		return e.fail("dev", err)
	}
	procs.Apply()
	return serve(ctx, e, cfg, serveOptions{adminGID: os.Getgid(), onReady: func(d *daemon) {
		dv.printTry(e)
	}})
}

func (dv *devEnv) printTry(e *env) {
	w := e.stdout
	fmt.Fprintf(w, "\napplianced dev is running. State, config and sockets are in %s\n", dv.dir)
	fmt.Fprintf(w, "\nIn another terminal:\n\n  export APPLIANCED_CONFIG=%s\n", dv.cfgPath)
	base := []string{
		"",
		"# the daemon's health and the audit trail",
		fmt.Sprintf("curl -sk https://%s/healthz", dv.listen),
		dv.cli + " audit tail -f",
		dv.cli + " audit verify",
	}
	for _, l := range append(base, dv.try...) {
		if l == "" {
			fmt.Fprintln(w)
			continue
		}
		fmt.Fprintf(w, "  %s\n", l)
	}
	fmt.Fprintf(w, "\nCtrl-C stops the demo and deletes %s.\n", dv.dir)
}

// cliName is how the printout invokes this binary: its path, or `go run`
// when it was built into a temporary dir by `go run`.
func cliName() string {
	exe, err := os.Executable()
	if err != nil || strings.Contains(exe, "go-build") {
		return "go run ./cmd/applianced"
	}
	if wd, err := os.Getwd(); err == nil {
		if rel, err := filepath.Rel(wd, exe); err == nil && !strings.HasPrefix(rel, "..") {
			return "./" + rel
		}
	}
	return exe
}

// freeAddr returns addr if it can be bound, else a free port on its host.
// A port of 0 picks a free one, so the printout shows the real address.
func freeAddr(addr string) string {
	host, port, _ := net.SplitHostPort(addr)
	if port != "0" {
		if l, err := net.Listen("tcp", addr); err == nil {
			l.Close()
			return addr
		}
	}
	l, err := net.Listen("tcp", net.JoinHostPort(host, "0"))
	if err != nil {
		return addr
	}
	defer l.Close()
	return l.Addr().String()
}
