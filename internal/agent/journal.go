package agent

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"github.com/guildnet/metaguildnet/messages"
)

// Entry is what the agent remembers about one task: that is how a
// redelivered task is never run twice and a result that could not be sent
// survives a restart.
type Entry struct {
	TaskID   string    `json:"task_id"`
	Deadline time.Time `json:"deadline"`
	Done     bool      `json:"done"`
	// Settled: the controller has stored the result, so the entry no
	// longer carries it. (Stored under "sent", the name journals written
	// before the rename use.)
	Settled bool `json:"sent"`
	// Result is the encoded messages.Result, as sent. Bytes, not a
	// struct: they are what is sent again, and a journal of many entries
	// is cheap for the garbage collector.
	Result json.RawMessage `json:"result,omitempty"`
}

// Journal stores entries. FileJournal is the real one; MemJournal serves
// simulated agents in benchmarks.
type Journal interface {
	Get(id string) (Entry, bool)
	Put(e Entry) error
	// Unsettled lists finished entries whose result is not settled yet.
	Unsettled() []Entry
	// Prune forgets settled entries whose deadline is before t.
	Prune(t time.Time)
}

// MemJournal keeps entries in memory only.
type MemJournal struct {
	mu sync.Mutex
	m  map[string]Entry
}

func NewMemJournal() *MemJournal { return &MemJournal{m: map[string]Entry{}} }

func (j *MemJournal) Get(id string) (Entry, bool) {
	j.mu.Lock()
	defer j.mu.Unlock()
	e, ok := j.m[id]
	return e, ok
}

func (j *MemJournal) Put(e Entry) error {
	j.mu.Lock()
	defer j.mu.Unlock()
	j.m[e.TaskID] = e
	return nil
}

func (j *MemJournal) Unsettled() []Entry {
	j.mu.Lock()
	defer j.mu.Unlock()
	var out []Entry
	for _, e := range j.m {
		if e.Done && !e.Settled {
			out = append(out, e)
		}
	}
	return out
}

func (j *MemJournal) Prune(t time.Time) {
	j.mu.Lock()
	defer j.mu.Unlock()
	for id, e := range j.m {
		if e.Settled && e.Deadline.Before(t) {
			delete(j.m, id)
		}
	}
}

// FileJournal is a MemJournal mirrored to one small file per task in dir,
// written atomically (temp file and rename).
type FileJournal struct {
	MemJournal
	dir string
}

// OpenFileJournal loads the entries in dir, creating it if needed.
// Unreadable files are skipped, not fatal: losing one entry costs at most one
// re-run, while refusing to start would cost the node.
func OpenFileJournal(dir string) (*FileJournal, error) {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return nil, fmt.Errorf("journal %s: %w", dir, err)
	}
	j := &FileJournal{MemJournal: MemJournal{m: map[string]Entry{}}, dir: dir}
	ents, err := os.ReadDir(dir)
	if err != nil {
		return nil, fmt.Errorf("journal %s: %w", dir, err)
	}
	for _, de := range ents {
		if !strings.HasSuffix(de.Name(), ".json") {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, de.Name()))
		if err != nil {
			continue
		}
		var e Entry
		if json.Unmarshal(b, &e) != nil || messages.ValidTaskID(e.TaskID) != nil {
			continue
		}
		if e.Result != nil {
			if r, err := messages.Decode[messages.Result](e.Result, 0); err != nil || r.TaskID != e.TaskID {
				// A result that cannot be sent: the task counts as cut
				// short, which is reported, never run again.
				e.Done, e.Result = false, nil
			}
		}
		j.m[e.TaskID] = e
	}
	return j, nil
}

func (j *FileJournal) Put(e Entry) error {
	if err := messages.ValidTaskID(e.TaskID); err != nil {
		return err
	}
	b, _ := json.Marshal(e)
	path := filepath.Join(j.dir, e.TaskID+".json")
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, b, 0o600); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return fmt.Errorf("journal: %w", err)
	}
	return j.MemJournal.Put(e)
}

func (j *FileJournal) Prune(t time.Time) {
	j.mu.Lock()
	var gone []string
	for id, e := range j.m {
		if e.Settled && e.Deadline.Before(t) {
			gone = append(gone, id)
			delete(j.m, id)
		}
	}
	j.mu.Unlock()
	for _, id := range gone {
		if err := os.Remove(filepath.Join(j.dir, id+".json")); err != nil && !errors.Is(err, os.ErrNotExist) {
			continue
		}
	}
}
