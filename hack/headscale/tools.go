//go:build tools

// Package headscale only records, for go mod tidy, the main package this tools
// module builds: Headscale's server and CLI for the test world.
package headscale

import _ "github.com/juanfont/headscale/cmd/headscale"
