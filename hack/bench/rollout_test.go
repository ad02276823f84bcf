package main

import "testing"

func TestParseRolloutBench(t *testing.T) {
	out := []byte("goos: linux\nBenchmarkRolloutBatchOverhead-2   \t       1\t 186673044 ns/op\t        50.00 batch-size\t         8.235 ms/batch\t      1000 nodes\t         9.636 plan-ms\n" +
		"BenchmarkRolloutNoop100-2   \t       1\t 954164710 ns/op\t        76.09 ms/batch\t       100.0 nodes\t       946.0 total-ms\nPASS\n")
	rb := parseRolloutBench(out)
	if rb.OverheadMSPerBatch != 8.235 || rb.OverheadNodes != 1000 || rb.OverheadBatchSize != 50 || rb.OverheadPlanMS != 9.636 ||
		rb.Noop100TotalMS != 946 || rb.Noop100Nodes != 100 || rb.Noop100MSPerBatch != 76.09 {
		t.Fatalf("%+v", rb)
	}
}
