// Package deploytest extracts the command lines from the files in deploy/
// (systemd ExecStart=, Kubernetes container command+args) so that tests can
// parse them with the real CLI.
package deploytest

import (
	"fmt"
	"os"
	"regexp"
	"strings"

	"gopkg.in/yaml.v3"
)

var varRef = regexp.MustCompile(`\$\{[A-Za-z_]+\}|\$\([A-Za-z_]+\)|%[a-zA-Z]`)

// substitute stands in a plausible value for unit specifiers (%l) and
// variable references ($(NODE_NAME), ${X}).
func substitute(s string) string { return varRef.ReplaceAllString(s, "value1") }

// ExecStart returns the ExecStart= argv of a systemd unit (continuations
// joined, specifiers substituted).
func ExecStart(path string) ([]string, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	text := strings.ReplaceAll(string(b), "\\\n", " ")
	for line := range strings.Lines(text) {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(line), "ExecStart="); ok {
			return strings.Fields(substitute(rest)), nil
		}
	}
	return nil, fmt.Errorf("%s: no ExecStart=", path)
}

type container struct {
	Name    string   `yaml:"name"`
	Command []string `yaml:"command"`
	Args    []string `yaml:"args"`
}

// ContainerArgs returns command+args of every container and init container
// in every document of a Kubernetes manifest, by container name.
func ContainerArgs(path string) (map[string][]string, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := map[string][]string{}
	dec := yaml.NewDecoder(f)
	for {
		var doc struct {
			Spec struct {
				Template struct {
					Spec struct {
						Containers     []container `yaml:"containers"`
						InitContainers []container `yaml:"initContainers"`
					} `yaml:"spec"`
				} `yaml:"template"`
			} `yaml:"spec"`
		}
		if err := dec.Decode(&doc); err != nil {
			if err.Error() == "EOF" {
				return out, nil
			}
			return nil, fmt.Errorf("%s: %w", path, err)
		}
		for _, c := range append(doc.Spec.Template.Spec.InitContainers, doc.Spec.Template.Spec.Containers...) {
			var argv []string
			for _, a := range append(c.Command, c.Args...) {
				argv = append(argv, substitute(a))
			}
			out[c.Name] = argv
		}
	}
}
