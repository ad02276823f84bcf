//go:build tools

// Package tailscale only records, for go mod tidy, the main package this
// tools module builds: tailscaled, the node daemon the test world runs per
// simulated node (userspace networking, inside the loopback-only namespace).
package tailscale

import _ "tailscale.com/cmd/tailscaled"
