package messages

import "fmt"

// Bounds on what a node may send are defined in limits.go.

// boundedString refuses s when longer than max, naming field.
func boundedString(field, s string, max int) error {
	if len(s) > max {
		return fmt.Errorf("%s: %d bytes, at most %d", field, len(s), max)
	}
	return nil
}

func boundedList(field string, l []string, maxItems, maxLen int) error {
	if len(l) > maxItems {
		return fmt.Errorf("%s: %d entries, at most %d", field, len(l), maxItems)
	}
	for i, s := range l {
		if err := boundedString(fmt.Sprintf("%s[%d]", field, i), s, maxLen); err != nil {
			return err
		}
	}
	return nil
}

// ValidateFacts checks facts against the bounds above (the controller also
// checks stored facts with it, which older versions did not bound).
func ValidateFacts(f *Facts) error { return f.validate() }

func (f *Facts) validate() error {
	for _, s := range []struct{ field, v string }{
		{"facts.hostname", f.Hostname}, {"facts.os", f.OS}, {"facts.kernel", f.Kernel},
		{"facts.arch", f.Arch}, {"facts.agent_version", f.AgentVersion},
	} {
		if err := boundedString(s.field, s.v, MaxFactString); err != nil {
			return err
		}
	}
	if f.CPUs < 0 || f.CPUs > 1<<16 {
		return fmt.Errorf("facts.cpus: %d is out of range", f.CPUs)
	}
	if err := boundedList("facts.addresses", f.Addresses, MaxFactAddresses, MaxAddressLen); err != nil {
		return err
	}
	if err := boundedList("facts.tailnet_ips", f.TailnetIPs, MaxFactAddresses, MaxAddressLen); err != nil {
		return err
	}
	return f.Tailnet.validate()
}
