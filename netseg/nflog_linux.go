package netseg

import (
	"context"
	"encoding/binary"
	"fmt"

	"github.com/mdlayher/netlink"
	"golang.org/x/sys/unix"
)

// nflogReader receives the packets the firewall logs to one nflog group.
type nflogReader struct {
	c     *netlink.Conn
	group uint16
}

func nfgen(family uint8, resID uint16) []byte {
	b := []byte{family, 0, 0, 0}
	binary.BigEndian.PutUint16(b[2:], resID)
	return b
}

func openNflog(nsFd int, group uint16) (*nflogReader, error) {
	c, err := netlink.Dial(unix.NETLINK_NETFILTER, &netlink.Config{NetNS: nsFd})
	if err != nil {
		return nil, fmt.Errorf("netseg: nflog socket: %w", err)
	}
	cmd := func(attrs []netlink.Attribute) error {
		ab, err := netlink.MarshalAttributes(attrs)
		if err != nil {
			return err
		}
		_, err = c.Execute(netlink.Message{
			Header: netlink.Header{
				Type:  netlink.HeaderType(nfSubsysULOG<<8 | nfulnlMsgConfig),
				Flags: netlink.Request | netlink.Acknowledge,
			},
			Data: append(nfgen(unix.AF_UNSPEC, group), ab...),
		})
		return err
	}
	mode := make([]byte, 6)
	binary.BigEndian.PutUint32(mode, 128) // headers are all we read
	mode[4] = nfulnlCopyPacket
	if err := cmd([]netlink.Attribute{{Type: nfulaCfgCmd, Data: []byte{nfulnlCfgCmdBind}}}); err != nil {
		c.Close()
		return nil, fmt.Errorf("netseg: bind nflog group %d: %w", group, err)
	}
	if err := cmd([]netlink.Attribute{{Type: nfulaCfgMode, Data: mode}}); err != nil {
		c.Close()
		return nil, fmt.Errorf("netseg: nflog copy mode: %w", err)
	}
	_ = c.SetReadBuffer(1 << 20)
	return &nflogReader{c: c, group: group}, nil
}

// run delivers drops to fn until ctx ends or the socket fails.
func (r *nflogReader) run(ctx context.Context, fn func(drop)) error {
	stop := context.AfterFunc(ctx, func() { r.c.Close() })
	defer stop()
	for {
		msgs, err := r.c.Receive()
		if err != nil {
			if ctx.Err() != nil {
				return nil
			}
			if oe, ok := err.(*netlink.OpError); ok && oe.Err == unix.ENOBUFS {
				continue // the kernel dropped log messages under load; counters still count
			}
			return fmt.Errorf("netseg: nflog receive: %w", err)
		}
		for _, m := range msgs {
			if m.Header.Type != netlink.HeaderType(nfSubsysULOG<<8|nfulnlMsgPacket) {
				continue
			}
			if d, err := parseNflog(m.Data); err == nil {
				fn(d)
			}
		}
	}
}

func (r *nflogReader) Close() error { return r.c.Close() }
