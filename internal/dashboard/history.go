package dashboard

import (
	"context"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// The cluster page's history: the last 24 h from the stored reports, as
// slots of 15 minutes, each shown with the newest report in it. A report is
// read once and kept as a small summary (each cluster's layer statuses and
// mean check durations); summaries older than the window are dropped.
const (
	historyWindow = 24 * time.Hour
	historySlots  = 96
	// maxReadsPerPage bounds the reports one page view reads (the rest
	// come with later views): a fleet's reports can be megabytes each.
	maxReadsPerPage = 24
	maxPlots        = 40
)

type summary struct {
	at     time.Time
	layers map[string]map[string]string  // cluster -> layer -> status
	durs   map[string]map[string]float64 // cluster -> check -> mean ms
}

type history struct {
	mu   sync.Mutex
	sums map[string]*summary
	// refs is the stored reports' list, read again when a report was
	// stored since (stale) or after refsFor: listing the object store on
	// every live refresh of a cluster page would cost more than the page.
	refs   []ReportRef
	refsAt time.Time
	stale  bool
}

const refsFor = time.Minute

// reportStored marks the list of reports out of date.
func (h *history) reportStored() {
	h.mu.Lock()
	h.stale = true
	h.mu.Unlock()
}

func (h *history) reports(ctx context.Context, src Source, since time.Time, now time.Time) []ReportRef {
	h.mu.Lock()
	if !h.stale && now.Sub(h.refsAt) < refsFor && !h.refsAt.IsZero() {
		refs := h.refs
		h.mu.Unlock()
		return refs
	}
	h.stale = false
	h.mu.Unlock()
	refs, err := src.Reports(ctx, now.Add(-historyWindow-refsFor))
	if err != nil {
		h.mu.Lock()
		h.stale = true // try again next time
		h.mu.Unlock()
		return nil
	}
	h.mu.Lock()
	h.refs, h.refsAt = refs, now
	h.mu.Unlock()
	return refs
}

func newHistory() *history { return &history{sums: map[string]*summary{}} }

func summarize(rep messages.Report) *summary {
	s := &summary{at: rep.Timestamp, layers: map[string]map[string]string{}, durs: map[string]map[string]float64{}}
	for _, c := range rep.Clusters {
		m := map[string]string{}
		for _, l := range c.Layers {
			m[l.Name] = l.Status
		}
		s.layers[c.Name] = m
	}
	type acc struct {
		sum float64
		n   int
	}
	sums := map[string]map[string]*acc{}
	for _, l := range rep.Layers {
		for _, c := range l.Checks {
			if c.Status == messages.CheckSkipped || c.Status == messages.CheckUnknown {
				continue
			}
			m := sums[c.Cluster]
			if m == nil {
				m = map[string]*acc{}
				sums[c.Cluster] = m
			}
			a := m[c.Name]
			if a == nil {
				a = &acc{}
				m[c.Name] = a
			}
			a.sum += float64(c.DurationMS)
			a.n++
		}
	}
	for cl, m := range sums {
		out := make(map[string]float64, len(m))
		for k, a := range m {
			out[k] = a.sum / float64(a.n)
		}
		s.durs[cl] = out
	}
	return s
}

// slot is one 15-minute slice of a layer's timeline.
type slot struct {
	Status, Title string
}

type timelineRow struct {
	Layer string
	Slots []slot
}

// plot is one check's durations over the window, as an SVG polyline.
type plot struct {
	Check  string
	Points string
	MaxMS  string
	LastMS string
	// LastX and LastY place a dot on the newest point (a single report
	// is a dot, not a line).
	LastX, LastY string
}

func (h *history) timeline(ctx context.Context, src Source, cluster string, layers []string, now time.Time) ([]timelineRow, []plot) {
	start := now.Add(-historyWindow)
	refs := h.reports(ctx, src, start, now)
	slotLen := historyWindow / historySlots
	newest := make([]ReportRef, historySlots)
	for _, r := range refs {
		i := int(r.Time.Sub(start) / slotLen)
		if i < 0 || i >= historySlots {
			continue
		}
		if r.Time.After(newest[i].Time) {
			newest[i] = r
		}
	}
	h.mu.Lock()
	for id, s := range h.sums {
		if s.at.Before(start.Add(-slotLen)) {
			delete(h.sums, id)
		}
	}
	h.mu.Unlock()
	sums := make([]*summary, historySlots)
	reads := 0
	for i := historySlots - 1; i >= 0; i-- { // newest first: they matter most
		id := newest[i].ID
		if id == "" {
			continue
		}
		h.mu.Lock()
		s := h.sums[id]
		h.mu.Unlock()
		if s == nil && reads < maxReadsPerPage && ctx.Err() == nil {
			reads++
			if rep, err := src.Report(ctx, id); err == nil {
				s = summarize(rep)
				h.mu.Lock()
				h.sums[id] = s
				h.mu.Unlock()
			}
		}
		sums[i] = s
	}
	var rows []timelineRow
	for _, l := range layers {
		row := timelineRow{Layer: l, Slots: make([]slot, historySlots)}
		for i, s := range sums {
			at := start.Add(time.Duration(i) * slotLen).UTC().Format("15:04")
			st := "none"
			if s != nil {
				if v, ok := s.layers[cluster][l]; ok {
					st = v
				}
			}
			row.Slots[i] = slot{Status: st, Title: fmt.Sprintf("%s from %s: %s", l, at, st)}
		}
		rows = append(rows, row)
	}
	checks := map[string]bool{}
	for _, s := range sums {
		if s != nil {
			for c := range s.durs[cluster] {
				checks[c] = true
			}
		}
	}
	names := make([]string, 0, len(checks))
	for c := range checks {
		names = append(names, c)
	}
	slices.Sort(names)
	if len(names) > maxPlots {
		names = names[:maxPlots]
	}
	var plots []plot
	for _, c := range names {
		var mx, last float64
		for _, s := range sums {
			if s != nil {
				if v, ok := s.durs[cluster][c]; ok {
					mx = max(mx, v)
					last = v
				}
			}
		}
		var pts []string
		var lastX, lastY string
		for i, s := range sums {
			if s == nil {
				continue
			}
			v, ok := s.durs[cluster][c]
			if !ok {
				continue
			}
			y := 19.0
			if mx > 0 {
				y = 19 - 18*v/mx
			}
			lastX, lastY = strconv.Itoa(i), strconv.FormatFloat(y, 'f', 1, 64)
			pts = append(pts, lastX+","+lastY)
		}
		plots = append(plots, plot{Check: c, Points: strings.Join(pts, " "),
			MaxMS: strconv.FormatFloat(mx, 'f', 1, 64), LastMS: strconv.FormatFloat(last, 'f', 1, 64), LastX: lastX, LastY: lastY})
	}
	return rows, plots
}
