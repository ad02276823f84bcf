package controller

import (
	"testing"
	"time"
)

func TestSetupBackoff(t *testing.T) {
	for attempt, want := range map[int]time.Duration{1: 2 * time.Second, 2: 4 * time.Second, 3: 8 * time.Second, 4: 16 * time.Second, 5: 30 * time.Second, 40: 30 * time.Second} {
		for range 50 {
			d := backoff(2*time.Second, attempt)
			lo := time.Duration(float64(want) * 0.8)
			if d < lo || d > min(time.Duration(float64(want)*1.2), setupMaxBackoff) {
				t.Fatalf("attempt %d: %v, want %v ±20%% (at most 30s)", attempt, d, want)
			}
		}
	}
}

func TestLayerStatusOver(t *testing.T) {
	for _, tc := range []struct {
		per  map[string]string
		want string
	}{
		{map[string]string{"a": layerVerified, "b": layerVerified}, layerVerified},
		{map[string]string{"a": layerVerified, "b": layerRolledBack}, layerRolledBack},
		{map[string]string{"a": layerFailed, "b": layerUnhealthy}, layerFailed},
		{map[string]string{"a": layerVerified, "b": layerRunning}, layerRunning},
		{map[string]string{"a": layerVerified, "b": layerSkipped}, layerVerified},
		{map[string]string{"a": layerSkipped}, layerSkipped},
		{map[string]string{}, layerPending},
	} {
		if got := layerStatusOver(tc.per); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.per, got, tc.want)
		}
	}
}
