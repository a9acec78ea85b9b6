package main

import (
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
)

// clockTicks is USER_HZ, the unit of /proc CPU times (100 on every Linux
// this runs on; reading it needs sysconf, so cgo).
const clockTicks = 100

// cpuSnap is the CPU seconds used so far by each part of the system, and by
// the whole machine.
type cpuSnap struct {
	by          map[string]float64
	busy, total float64 // machine-wide, from /proc/stat
}

// cpuNow samples the CPU time of the given processes (by group), of the
// Postgres server (postmaster and every backend), of this process, and of
// the machine.
func (e *env) cpuNow(groups map[string][]*proc) cpuSnap {
	s := cpuSnap{by: map[string]float64{}}
	for name, ps := range groups {
		for _, p := range ps {
			s.by[name] += procCPU(p.cmd.Process.Pid)
		}
	}
	pg, wal := e.postgresCPU()
	s.by["postgres"], s.by["walsender"] = pg-wal, wal
	s.by["bench"] = procCPU(os.Getpid())
	s.busy, s.total = machineCPU()
	return s
}

// add adds d's figures to s.
func (s *cpuSnap) add(d cpuSnap) {
	if s.by == nil {
		s.by = map[string]float64{}
	}
	for k, v := range d.by {
		s.by[k] += v
	}
	s.busy += d.busy
	s.total += d.total
}

// sub returns s - earlier.
func (s cpuSnap) sub(earlier cpuSnap) cpuSnap {
	d := cpuSnap{by: map[string]float64{}, busy: s.busy - earlier.busy, total: s.total - earlier.total}
	for k, v := range s.by {
		d.by[k] = v - earlier.by[k]
	}
	return d
}

// procCPU returns the user+system CPU seconds of pid, 0 when it is gone.
func procCPU(pid int) float64 {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return 0
	}
	_, f := statFields(string(b))
	if len(f) < 13 {
		return 0
	}
	// After "pid (comm)": state ppid ... utime is the 12th, stime the 13th.
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / clockTicks
}

// statFields splits /proc/<pid>/stat after the command name, which may
// hold spaces: it returns the ppid and the fields from the state on.
func statFields(s string) (ppid int, fields []string) {
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, nil
	}
	fields = strings.Fields(s[i+1:])
	if len(fields) > 1 {
		ppid, _ = strconv.Atoi(fields[1])
	}
	return ppid, fields
}

// postgresCPU returns the CPU seconds of the postmaster and its live
// children (backends, background processes), and apart of the WAL
// senders (logical decoding) among them. Backends that ended are not
// counted: the scenarios keep their connections open.
func (e *env) postgresCPU() (total, walsenders float64) {
	b, err := os.ReadFile(filepath.Join(e.pg.Dir, "postmaster.pid"))
	if err != nil {
		return 0, 0
	}
	pm, err := strconv.Atoi(strings.TrimSpace(strings.SplitN(string(b), "\n", 2)[0]))
	if err != nil {
		return 0, 0
	}
	total = procCPU(pm)
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, path := range stats {
		data, err := os.ReadFile(path)
		if err != nil {
			continue
		}
		if ppid, _ := statFields(string(data)); ppid == pm {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(path)))
			c := procCPU(pid)
			total += c
			if cmd, _ := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid)); strings.HasPrefix(string(cmd), "postgres: walsender") {
				walsenders += c
			}
		}
	}
	return total, walsenders
}

// machineCPU returns the busy and total CPU seconds of the machine.
func machineCPU() (busy, total float64) {
	b, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0
	}
	line, _, _ := strings.Cut(string(b), "\n")
	f := strings.Fields(line)
	if len(f) < 8 || f[0] != "cpu" {
		return 0, 0
	}
	// user nice system idle iowait irq softirq steal ...
	for i, v := range f[1:min(len(f), 9)] {
		x, _ := strconv.ParseFloat(v, 64)
		total += x
		if i != 3 && i != 4 {
			busy += x
		}
	}
	return busy / clockTicks, total / clockTicks
}
