//go:build linux

package hardening

import (
	"context"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
)

// PortRule is one port the ingress allow list opens: proto "tcp" or "udp".
type PortRule struct {
	Proto string
	Port  int
}

// Listener is a socket accepting traffic: a TCP socket in LISTEN state or an
// unconnected bound UDP socket.
type Listener struct {
	Proto   string // "tcp" or "udp"
	Addr    netip.AddrPort
	Inode   uint64
	Process string // command name, when it could be found
}

func (l Listener) String() string {
	s := l.Proto + " " + l.Addr.String()
	if l.Process != "" {
		s += " (" + l.Process + ")"
	}
	return s
}

// ListeningSockets reads the listeners of the calling process's network
// namespace from procRoot ("/proc").
func ListeningSockets(procRoot string) ([]Listener, error) {
	var out []Listener
	for _, f := range []struct {
		file, proto, state string
	}{
		{"tcp", "tcp", "0A"}, {"tcp6", "tcp", "0A"},
		{"udp", "udp", "07"}, {"udp6", "udp", "07"},
	} {
		lines, err := readLines(filepath.Join(procRoot, "net", f.file))
		if os.IsNotExist(err) {
			continue // no IPv6 in this kernel
		}
		if err != nil {
			return nil, fmt.Errorf("hardening: read /proc/net/%s: %w", f.file, err)
		}
		for _, line := range lines[min(1, len(lines)):] {
			l, ok, err := parseProcNetLine(line, f.proto, f.state)
			if err != nil {
				return nil, fmt.Errorf("hardening: /proc/net/%s: %w", f.file, err)
			}
			if ok {
				out = append(out, l)
			}
		}
	}
	return out, nil
}

// parseProcNetLine parses one row of /proc/net/{tcp,udp}[6]; ok is false
// for a row not in the wanted state (or, for UDP, connected).
func parseProcNetLine(line, proto, wantState string) (Listener, bool, error) {
	fields := strings.Fields(line)
	if len(fields) < 10 {
		return Listener{}, false, fmt.Errorf("short line %q", line)
	}
	if fields[3] != wantState {
		return Listener{}, false, nil
	}
	if proto == "udp" {
		if _, port, err := parseHexAddrPort(fields[2]); err != nil || port != 0 {
			return Listener{}, false, err // connected UDP socket: not a listener
		}
	}
	addr, port, err := parseHexAddrPort(fields[1])
	if err != nil {
		return Listener{}, false, err
	}
	inode, err := strconv.ParseUint(fields[9], 10, 64)
	if err != nil {
		return Listener{}, false, fmt.Errorf("inode %q: %w", fields[9], err)
	}
	return Listener{Proto: proto, Addr: netip.AddrPortFrom(addr, port), Inode: inode}, true, nil
}

// parseHexAddrPort decodes "0100007F:1F90" (IPv4) or the 32-hex-digit IPv6
// form; the kernel prints each 32-bit word in host (little-endian) order.
func parseHexAddrPort(s string) (netip.Addr, uint16, error) {
	a, p, ok := strings.Cut(s, ":")
	if !ok {
		return netip.Addr{}, 0, fmt.Errorf("address %q: no port", s)
	}
	port, err := strconv.ParseUint(p, 16, 16)
	if err != nil {
		return netip.Addr{}, 0, fmt.Errorf("port %q: %w", p, err)
	}
	raw, err := hex.DecodeString(a)
	if err != nil || (len(raw) != 4 && len(raw) != 16) {
		return netip.Addr{}, 0, fmt.Errorf("address %q: not 8 or 32 hex digits", a)
	}
	for i := 0; i < len(raw); i += 4 {
		binary.BigEndian.PutUint32(raw[i:], binary.LittleEndian.Uint32(raw[i:]))
	}
	ip, _ := netip.AddrFromSlice(raw)
	return ip.Unmap(), uint16(port), nil
}

// socketOwners maps socket inodes to the command names of the processes
// holding them (only the processes the caller may inspect).
func socketOwners(procRoot string) map[uint64]string {
	owners := map[uint64]string{}
	pids, _ := filepath.Glob(filepath.Join(procRoot, "[0-9]*"))
	for _, pid := range pids {
		fds, err := os.ReadDir(filepath.Join(pid, "fd"))
		if err != nil {
			continue
		}
		var comm string
		for _, fd := range fds {
			target, err := os.Readlink(filepath.Join(pid, "fd", fd.Name()))
			if err != nil || !strings.HasPrefix(target, "socket:[") {
				continue
			}
			ino, err := strconv.ParseUint(strings.TrimSuffix(strings.TrimPrefix(target, "socket:["), "]"), 10, 64)
			if err != nil {
				continue
			}
			if comm == "" {
				b, _ := os.ReadFile(filepath.Join(pid, "comm"))
				comm = strings.TrimSpace(string(b))
			}
			owners[ino] = comm
		}
	}
	return owners
}

// ListeningCheck compares the sockets listening beyond loopback with the
// ingress allow list. A listener the list does not open is reachable by
// nobody while the firewall holds, but it is exposure the firewall alone
// stands in front of.
func ListeningCheck(procRoot string, allowed []PortRule) Check {
	return Check{Name: "listening sockets", Run: func(ctx context.Context) []Result {
		ls, err := ListeningSockets(procRoot)
		if err != nil {
			return []Result{{Name: "listening sockets", Status: Warn, Detail: err.Error(), Fix: "run `applianced doctor` as root"}}
		}
		return listeningResults(ls, allowed, socketOwners(procRoot))
	}}
}

func listeningResults(ls []Listener, allowed []PortRule, owners map[uint64]string) []Result {
	open := map[PortRule]bool{}
	for _, a := range allowed {
		open[PortRule{Proto: strings.ToLower(a.Proto), Port: a.Port}] = true
	}
	seen := map[string]bool{}
	var out []Result
	for _, l := range ls {
		if l.Addr.Addr().IsLoopback() {
			continue
		}
		l.Process = owners[l.Inode]
		key := l.String()
		if seen[key] {
			continue // the same socket in tcp and tcp6, or SO_REUSEPORT twins
		}
		seen[key] = true
		name := "listening " + l.Proto + " " + l.Addr.String()
		if open[PortRule{Proto: l.Proto, Port: int(l.Addr.Port())}] {
			out = append(out, Result{Name: name, Status: Pass, Detail: l.String() + " is in the ingress allow list"})
			continue
		}
		out = append(out, Result{Name: name, Status: Warn,
			Detail: l.String() + " listens beyond loopback but no [[net.ingress]] rule opens its port",
			Fix:    "stop the service or bind it to 127.0.0.1; if it must be reachable, add a [[net.ingress]] rule"})
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	if len(out) == 0 {
		out = append(out, Result{Name: "listening sockets", Status: Pass, Detail: "nothing listens beyond loopback"})
	}
	return out
}
