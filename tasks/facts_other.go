//go:build !linux

package tasks

import "net"

func upIPs() []net.IP { return upIPsPortable() }
