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
	}
	m.reg.MustRegister(m.refusedTotal, m.tasksIssued, m.resultsReceived, m.outcomes, m.taskDuration, m.heartbeats,
		prometheus.NewGoCollector(), prometheus.NewProcessCollector(prometheus.ProcessCollectorOpts{}))
	return m
}

func (m *metrics) refused(kind, reason string) { m.refusedTotal.WithLabelValues(kind, reason).Inc() }
func (m *metrics) outcome(o string)            { m.outcomes.WithLabelValues(o).Inc() }
func (m *metrics) observeTask(d time.Duration) { m.taskDuration.Observe(d.Seconds()) }

// fleetCollector exports the fleet gauges computed at scrape time.
type fleetCollector struct {
	reg  *registry
	desc *prometheus.Desc
}

func (f fleetCollector) Describe(ch chan<- *prometheus.Desc) { ch <- f.desc }
func (f fleetCollector) Collect(ch chan<- prometheus.Metric) {
	on, st, off := f.reg.counts(time.Now())
	ch <- prometheus.MustNewConstMetric(f.desc, prometheus.GaugeValue, float64(on), "online")
	ch <- prometheus.MustNewConstMetric(f.desc, prometheus.GaugeValue, float64(st), "stale")
	ch <- prometheus.MustNewConstMetric(f.desc, prometheus.GaugeValue, float64(off), "offline")
}
