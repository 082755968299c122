package admin

import (
	"fmt"
	"net"
	"unsafe"

	"golang.org/x/sys/unix"
)

// PeerCaller reads the kernel's credentials of the process on the other end
// of c: uid, gid and pid (SO_PEERCRED) and its supplementary groups
// (SO_PEERGROUPS), as they were when it connected.
func PeerCaller(c *net.UnixConn) (Caller, error) {
	raw, err := c.SyscallConn()
	if err != nil {
		return Caller{}, fmt.Errorf("admin: peer credentials: %w", err)
	}
	var (
		cred   *unix.Ucred
		groups []int
		serr   error
	)
	err = raw.Control(func(fd uintptr) {
		cred, serr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
		if serr != nil {
			return
		}
		groups, serr = peerGroups(int(fd))
	})
	if err == nil {
		err = serr
	}
	if err != nil {
		return Caller{}, fmt.Errorf("admin: peer credentials: %w", err)
	}
	return Caller{UID: int(cred.Uid), GID: int(cred.Gid), PID: int(cred.Pid), Groups: groups}, nil
}

func peerGroups(fd int) ([]int, error) {
	buf := make([]uint32, 64)
	for {
		size := uint32(len(buf) * 4)
		_, _, errno := unix.Syscall6(unix.SYS_GETSOCKOPT, uintptr(fd), unix.SOL_SOCKET, unix.SO_PEERGROUPS,
			uintptr(unsafe.Pointer(&buf[0])), uintptr(unsafe.Pointer(&size)), 0)
		if errno == unix.ERANGE {
			buf = make([]uint32, size/4+1)
			continue
		}
		if errno != 0 {
			return nil, errno
		}
		out := make([]int, size/4)
		for i := range out {
			out[i] = int(buf[i])
		}
		return out, nil
	}
}
