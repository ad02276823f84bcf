package tasks

import (
	"net"
	"syscall"
	"unsafe"
)

// upIPs lists the addresses of the interfaces that are up with one dump of
// the links and one of the addresses, where the net package would take two
// dumps per interface. Heartbeats carry facts every minute on every node.
func upIPs() []net.IP {
	ifs, err := net.Interfaces()
	if err != nil {
		return nil
	}
	up := make(map[uint32]bool, len(ifs))
	for _, ifc := range ifs {
		if ifc.Flags&net.FlagUp != 0 {
			up[uint32(ifc.Index)] = true
		}
	}
	tab, err := syscall.NetlinkRIB(syscall.RTM_GETADDR, syscall.AF_UNSPEC)
	if err != nil {
		return upIPsPortable()
	}
	msgs, err := syscall.ParseNetlinkMessage(tab)
	if err != nil {
		return upIPsPortable()
	}
	var out []net.IP
	for i := range msgs {
		m := &msgs[i]
		if m.Header.Type != syscall.RTM_NEWADDR || len(m.Data) < syscall.SizeofIfAddrmsg {
			continue
		}
		ifam := (*syscall.IfAddrmsg)(unsafe.Pointer(&m.Data[0]))
		if !up[ifam.Index] {
			continue
		}
		attrs, err := syscall.ParseNetlinkRouteAttr(m)
		if err != nil {
			continue
		}
		if ip := addrOf(ifam.Family, attrs); ip != nil {
			out = append(out, ip)
		}
	}
	return out
}

// addrOf picks the address as the net package does: the local address of
// a point-to-point link, else the interface address.
func addrOf(family uint8, attrs []syscall.NetlinkRouteAttr) net.IP {
	want := uint16(syscall.IFA_ADDRESS)
	for _, a := range attrs {
		if a.Attr.Type == syscall.IFA_LOCAL {
			want = syscall.IFA_LOCAL
		}
	}
	for _, a := range attrs {
		if a.Attr.Type != want {
			continue
		}
		switch {
		case family == syscall.AF_INET && len(a.Value) >= net.IPv4len:
			return net.IPv4(a.Value[0], a.Value[1], a.Value[2], a.Value[3])
		case family == syscall.AF_INET6 && len(a.Value) >= net.IPv6len:
			return append(net.IP(nil), a.Value[:net.IPv6len]...)
		}
	}
	return nil
}
