package schema

import (
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"
	"time"
)

// WorkerSettings are one step's worker settings in the pipeline file.
// Zero fields leave the worker's flag (or its default) in place; a flag
// given on the command line or in its environment twin overrides the file.
type WorkerSettings struct {
	// One executor: Command (a process per job), Serve (a long-lived
	// process per slot) or HTTP (a URL the job is POSTed to).
	Command []string `json:"command,omitempty"`
	Serve   []string `json:"serve,omitempty"`
	HTTP    string   `json:"http,omitempty"`
	// Slots: Concurrency, or one member per GPU.
	Concurrency int      `json:"concurrency,omitempty"`
	GPUs        []string `json:"gpus,omitempty"`
	// Batching (Serve or HTTP): jobs per call and how long to gather them.
	Batch     int      `json:"batch,omitempty"`
	BatchWait Duration `json:"batch_wait,omitempty"`
	// Attempts and their bounds.
	Timeout      Duration `json:"timeout,omitempty"`
	StartTimeout Duration `json:"start_timeout,omitempty"`
	MaxAttempts  int      `json:"max_attempts,omitempty"`
	RetryBackoff Duration `json:"retry_backoff,omitempty"`
	Lease        Duration `json:"lease,omitempty"`
	Grace        Duration `json:"grace,omitempty"`
}

// workerKeys are the keys of WorkerSettings in the file, in its order.
var workerKeys = []string{"command", "serve", "http", "concurrency", "gpus", "batch", "batch_wait",
	"timeout", "start_timeout", "max_attempts", "retry_backoff", "lease", "grace"}

// Duration is a time.Duration written in the file as a string, "30s".
type Duration time.Duration

// UnmarshalJSON reads "30s" (or a number of seconds).
func (d *Duration) UnmarshalJSON(b []byte) error {
	var s string
	if err := json.Unmarshal(b, &s); err != nil {
		var secs float64
		if json.Unmarshal(b, &secs) != nil {
			return fmt.Errorf("%s is not a duration; write a string with a unit, such as \"30s\" or \"2m\"", b)
		}
		*d = Duration(secs * float64(time.Second))
		return nil
	}
	v, err := time.ParseDuration(s)
	if err != nil {
		return fmt.Errorf("%q is not a duration; use a number with a unit, such as \"30s\" or \"2m\"", s)
	}
	*d = Duration(v)
	return nil
}

// MarshalJSON writes the duration as a string.
func (d Duration) MarshalJSON() ([]byte, error) { return json.Marshal(time.Duration(d).String()) }

// parseWorkerSettings reads the settings at path (for messages) from raw:
// each key known, each value of its type and in range, one executor.
func parseWorkerSettings(path string, raw json.RawMessage) (WorkerSettings, error) {
	var keys map[string]json.RawMessage
	if err := json.Unmarshal(raw, &keys); err != nil {
		return WorkerSettings{}, fmt.Errorf("%s must be an object of settings, such as {\"command\": [\"./step.sh\"]}", path)
	}
	if err := knownKeys(path, keys, workerKeys...); err != nil {
		return WorkerSettings{}, err
	}
	var ws WorkerSettings
	for _, k := range slices.Sorted(maps.Keys(keys)) {
		// Decoding one key at a time names the key whose value is wrong.
		one, _ := json.Marshal(map[string]json.RawMessage{k: keys[k]})
		if err := json.Unmarshal(one, &ws); err != nil {
			return WorkerSettings{}, fmt.Errorf("%s.%s: %s", path, k, valueError(err))
		}
	}
	return ws, ws.validate(path)
}

// valueError says what a JSON type error means in the file's words.
func valueError(err error) string {
	var te *json.UnmarshalTypeError
	if errors.As(err, &te) {
		return fmt.Sprintf("a JSON %s where %s belongs", te.Value, map[string]string{
			"[]string": "a list of strings", "string": "a string", "int": "a whole number",
		}[te.Type.String()])
	}
	return err.Error()
}

func (ws WorkerSettings) validate(path string) error {
	n := 0
	for _, set := range []bool{len(ws.Command) > 0, len(ws.Serve) > 0, ws.HTTP != ""} {
		if set {
			n++
		}
	}
	bad := func(key, format string, a ...any) error {
		return fmt.Errorf("%s.%s: %s", path, key, fmt.Sprintf(format, a...))
	}
	switch {
	case n > 1:
		return fmt.Errorf("%s: give one of command, serve and http", path)
	case ws.Concurrency < 0 || ws.Concurrency > 1024:
		return bad("concurrency", "%d is out of range 1..1024", ws.Concurrency)
	case ws.Batch < 0 || ws.Batch > 1024:
		return bad("batch", "%d is out of range 1..1024", ws.Batch)
	case ws.Batch > 1 && len(ws.Command) > 0:
		return bad("batch", "a command runs one job per process; batch needs serve or http")
	case ws.MaxAttempts < 0 || ws.MaxAttempts > 1000:
		return bad("max_attempts", "%d is out of range 1..1000", ws.MaxAttempts)
	case ws.Lease != 0 && time.Duration(ws.Lease) < time.Second:
		return bad("lease", "%s is too short; use 1s or more", time.Duration(ws.Lease))
	}
	for key, d := range map[string]Duration{"batch_wait": ws.BatchWait, "timeout": ws.Timeout, "start_timeout": ws.StartTimeout,
		"retry_backoff": ws.RetryBackoff, "grace": ws.Grace} {
		if d < 0 {
			return bad(key, "%s is negative", time.Duration(d))
		}
	}
	for _, g := range ws.GPUs {
		if strings.TrimSpace(g) == "" {
			return bad("gpus", "holds an empty GPU id; list ids such as [\"0\", \"1\"]")
		}
	}
	return nil
}

// knownKeys refuses a key of m that is not one of keys, naming the nearest.
func knownKeys(path string, m map[string]json.RawMessage, keys ...string) error {
	for _, k := range slices.Sorted(maps.Keys(m)) {
		if slices.Contains(keys, k) {
			continue
		}
		where := "the pipeline file"
		if path != "" {
			where = path
		}
		msg := fmt.Sprintf("%s has no key %q; its keys are %s", where, k, strings.Join(keys, ", "))
		if near := nearestKey(k, keys); near != "" {
			msg = fmt.Sprintf("%s has no key %q; did you mean %q?", where, k, near)
		}
		return fmt.Errorf("%s", msg)
	}
	return nil
}

// nearestKey returns the key closest to k if it is close enough to be a typo.
func nearestKey(k string, keys []string) string {
	best, bestD := "", 3
	for _, c := range keys {
		if d := EditDistance(strings.ToLower(k), c); d < bestD {
			best, bestD = c, d
		}
	}
	return best
}

// EditDistance is the Levenshtein distance between a and b, which error
// sentences use to name the setting a typo meant.
func EditDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}
