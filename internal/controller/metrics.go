package controller

import (
	"time"

	"github.com/prometheus/client_golang/prometheus"
)

// metrics are the controller's Prometheus series, on its own registry so
// that tests can run several controllers in one process.
type metrics struct {
	reg             *prometheus.Registry
	maxBytes        int
	refusedTotal    *prometheus.CounterVec
	tasksIssued     prometheus.Counter
	resultsReceived prometheus.Counter
	outcomes        *prometheus.CounterVec
	taskDuration    prometheus.Histogram
	heartbeats      prometheus.Counter
	repliesDropped  *prometheus.CounterVec
	permDenied      *prometheus.CounterVec
}

func newMetrics(maxBytes int) *metrics {
	m := &metrics{
		reg:      prometheus.NewRegistry(),
		maxBytes: maxBytes,
		refusedTotal: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mgn_messages_refused_total",
			Help: "Messages and connections the controller refused, by what they were and why.",
		}, []string{"kind", "reason"}),
		tasksIssued: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mgn_tasks_issued_total", Help: "Tasks issued.",
		}),
		resultsReceived: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mgn_results_received_total", Help: "Results received from agents.",
		}),
		outcomes: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mgn_task_outcomes_total", Help: "Per-node task outcomes.",
		}, []string{"outcome"}),
		taskDuration: prometheus.NewHistogram(prometheus.HistogramOpts{
			Name:    "mgn_task_duration_seconds",
			Help:    "Time from issue until every targeted node has an outcome.",
			Buckets: prometheus.ExponentialBuckets(0.001, 2, 16),
		}),
		heartbeats: prometheus.NewCounter(prometheus.CounterOpts{
			Name: "mgn_heartbeats_total", Help: "Heartbeats received.",
		}),
		repliesDropped: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mgn_replies_dropped_total",
			Help: "Replies not sent because the request named a reply subject outside the requester's own inbox, by request kind.",
		}, []string{"kind"}),
		permDenied: prometheus.NewCounterVec(prometheus.CounterOpts{
			Name: "mgn_permission_denied_total",
			Help: "Publishes and subscriptions the embedded server denied a client, by operation.",
		}, []string{"op"}),
	}
	m.reg.MustRegister(m.refusedTotal, m.tasksIssued, m.resultsReceived, m.outcomes, m.taskDuration, m.heartbeats,
		m.repliesDropped, m.permDenied,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) refused(kind, reason string) { m.refusedTotal.WithLabelValues(kind, reason).Inc() }
func (m *metrics) replyDropped(kind string)    { m.repliesDropped.WithLabelValues(kind).Inc() }
func (m *metrics) outcome(o string)            { m.outcomes.WithLabelValues(o).Inc() }
func (m *metrics) observeTask(d time.Duration) { m.taskDuration.Observe(d.Seconds()) }

// fleetCollector exports the fleet gauges computed at scrape time.
type fleetCollector struct {
	c    *Controller // its registry; none on a standby
	desc *prometheus.Desc
}

func (f fleetCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }
func (f fleetCollector) Collect(ch chan<- prometheus.Metric) {
	var on, st, off int
	if reg := f.c.reg; reg != nil && f.c.acting() {
		on, st, off = reg.counts(time.Now())
	}
	ch <- prometheus.MustNewConstMetric(f.desc, prometheus.GaugeValue, float64(on), "online")
	ch <- prometheus.MustNewConstMetric(f.desc, prometheus.GaugeValue, float64(st), "stale")
	ch <- prometheus.MustNewConstMetric(f.desc, prometheus.GaugeValue, float64(off), "offline")
}
