// Command gendocs writes docs/TROUBLESHOOTING.md from the built-in
// diagnostics rules. Run it through `go generate ./diagnostics/rules`.
package main

import (
	"flag"
	"fmt"
	"os"

	"github.com/guildnet/metaguildnet/diagnostics/rules"
)

func main() {
	out := flag.String("o", "docs/TROUBLESHOOTING.md", "output file")
	flag.Parse()
	kb, err := rules.Builtin()
	if err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
	if err := os.WriteFile(*out, rules.Markdown(kb), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "gendocs:", err)
		os.Exit(1)
	}
}
