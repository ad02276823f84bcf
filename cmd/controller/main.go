// Command controller runs and operates a MetaGuildNet fleet: `controller
// serve` runs the controller (embedded NATS with JetStream); every other
// command talks to the controller started with the same --data-dir.
package main

import (
	"github.com/guildnet/metaguildnet/internal/cli"
)

func main() { cli.Main(newRoot()) }
