package agent

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/guildnet/metaguildnet/internal/testenv"
	"github.com/guildnet/metaguildnet/messages"
)

// A journal survives a restart: that is what keeps a task from running
// twice and an unsettled result from being lost.
func TestFileJournalSurvivesReopen(t *testing.T) {
	dir := t.TempDir()
	j, err := OpenFileJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	dl := time.Now().Add(time.Hour)
	j.Put(Entry{TaskID: "t1", Deadline: dl})
	j.Put(Entry{TaskID: "t2", Deadline: dl, Done: true, Result: messages.MustEncode(&messages.Result{V: 1, TaskID: "t2", Outcome: messages.OutcomeOK})})
	j.Put(Entry{TaskID: "t4", Deadline: dl, Done: true, Result: []byte(`{"v":1,"task_id":"t4","outcome":"great"}`)})
	j.Put(Entry{TaskID: "t3", Deadline: time.Now().Add(-48 * time.Hour), Done: true, Settled: true})
	if err := j.Put(Entry{TaskID: "../escape"}); err == nil {
		t.Fatal("a task id that is a path was accepted")
	}
	os.WriteFile(filepath.Join(dir, "garbage.json"), []byte("{not json"), 0o600)

	j2, err := OpenFileJournal(dir)
	if err != nil {
		t.Fatal(err)
	}
	if e, ok := j2.Get("t1"); !ok || e.Done {
		t.Fatalf("t1 after reopen: %+v %v", e, ok)
	}
	unsettled := j2.Unsettled()
	if len(unsettled) != 1 || unsettled[0].TaskID != "t2" {
		t.Fatalf("unsettled after reopen: %+v", unsettled)
	}
	if r, err := messages.Decode[messages.Result](unsettled[0].Result, 0); err != nil || r.Outcome != messages.OutcomeOK {
		t.Fatalf("t2's result after reopen: %+v %v", r, err)
	}
	// An unreadable result: the task counts as cut short, not as done.
	if e, ok := j2.Get("t4"); !ok || e.Done || e.Result != nil {
		t.Fatalf("t4 after reopen: %+v %v", e, ok)
	}
	j2.Prune(time.Now().Add(-24 * time.Hour))
	if _, ok := j2.Get("t3"); ok {
		t.Fatal("old sent entry not pruned")
	}
	if _, err := os.Stat(filepath.Join(dir, "t3.json")); !os.IsNotExist(err) {
		t.Fatalf("pruned entry's file: %v", err)
	}
}

func rssFileKiB(t *testing.T) int {
	b, err := os.ReadFile("/proc/self/status")
	if err != nil {
		testenv.Skip(t, "reading the resident set needs /proc: %v", err)
	}
	for line := range strings.Lines(string(b)) {
		if rest, ok := strings.CutPrefix(line, "RssFile:"); ok {
			var v int
			for _, f := range strings.Fields(rest) {
				if n, err := parseInt(f); err == nil {
					v = n
					break
				}
			}
			return v
		}
	}
	testenv.Skip(t, "no RssFile in /proc/self/status (kernel before 4.5)")
	return 0
}

func parseInt(s string) (int, error) {
	n := 0
	for _, c := range s {
		if c < '0' || c > '9' {
			return 0, os.ErrInvalid
		}
		n = n*10 + int(c-'0')
	}
	return n, nil
}

// releaseStartupPages drops clean pages of the binary from the resident
// set, and the process keeps working (they fault back in).
func TestReleaseStartupPages(t *testing.T) {
	before := rssFileKiB(t)
	if !releaseStartupPages() {
		testenv.Skip(t, "madvise(MADV_PAGEOUT) not supported here (kernel before 5.4)")
	}
	after := rssFileKiB(t)
	if after >= before {
		t.Fatalf("RssFile %d KiB -> %d KiB: nothing released", before, after)
	}
	// Code that was paged out still runs.
	if _, err := OpenFileJournal(t.TempDir()); err != nil {
		t.Fatal(err)
	}
}
