package messages

import (
	"fmt"
	"time"
)

// Payloads of the small built-in task kinds ping and sleep.

// PingOutput is the ping task's output. Time is pre-formatted (RFC 3339
// with nanoseconds): ping is the task fan-outs are measured with, and a
// string encodes several times faster than a time.Time (same JSON).
type PingOutput struct {
	V    int    `json:"v"`
	Pong string `json:"pong"` // the node's name
	Time string `json:"time"`
}

// SleepArgs are the sleep task's arguments: {"duration":"2s"}. V may be
// left out (see VerifyArgs).
type SleepArgs struct {
	V        int    `json:"v,omitempty"`
	Duration string `json:"duration"` // Go duration, 0 to MaxSleep
}

// SleepOutput is the sleep task's output.
type SleepOutput struct {
	V     int    `json:"v"`
	Slept string `json:"slept"`
}

func (o *PingOutput) Validate() error {
	if err := checkVersion(o.V); err != nil {
		return err
	}
	if _, err := time.Parse(time.RFC3339Nano, o.Time); err != nil {
		return fmt.Errorf("time: %q is not an RFC 3339 time", o.Time)
	}
	return nil
}

func (a *SleepArgs) Validate() error {
	if err := checkArgsVersion(a.V); err != nil {
		return err
	}
	_, err := a.Parse()
	return err
}

// Parse returns the validated duration.
func (a *SleepArgs) Parse() (time.Duration, error) {
	d, err := time.ParseDuration(a.Duration)
	if err != nil || d < 0 || d > MaxSleep {
		return 0, fmt.Errorf("duration: %q is not a duration between 0 and %v", a.Duration, MaxSleep)
	}
	return d, nil
}

func (o *SleepOutput) Validate() error {
	if err := checkVersion(o.V); err != nil {
		return err
	}
	if _, err := time.ParseDuration(o.Slept); err != nil {
		return fmt.Errorf("slept: %q is not a duration", o.Slept)
	}
	return nil
}
