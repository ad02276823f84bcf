//go:build !linux

package agent

func releaseStartupPages() bool { return false }
