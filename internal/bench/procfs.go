package bench

import (
	"bufio"
	"os"
	"strconv"
	"strings"

	"github.com/portspace/portspace/tuple"
)

// The readers below return 0 where /proc is missing (not Linux).

// meminfo returns a /proc/meminfo field (such as "Slab") in bytes.
func meminfo(key string) int64 {
	return procField("/proc/meminfo", key+":", 1024)
}

// procMemory returns the resident set and its peak (VmRSS, VmHWM) of a
// process in bytes.
func procMemory(pid int) (rss, hwm int64) {
	path := "/proc/" + strconv.Itoa(pid) + "/status"
	return procField(path, "VmRSS:", 1024), procField(path, "VmHWM:", 1024)
}

// procField returns the first number after key in a "key: N kB" file, times
// unit.
func procField(path, key string, unit int64) int64 {
	f, err := os.Open(path)
	if err != nil {
		return 0
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		line := sc.Text()
		if rest, ok := strings.CutPrefix(line, key); ok {
			fields := strings.Fields(rest)
			if len(fields) == 0 {
				return 0
			}
			n, _ := strconv.ParseInt(fields[0], 10, 64)
			return n * unit
		}
	}
	return 0
}

// sockstat returns "inuse" and "mem" (pages, returned in bytes) of proto's
// line in /proc/net/sockstat.
func sockstat(p tuple.Proto) (inuse, memBytes int64) {
	b, err := os.ReadFile("/proc/net/sockstat")
	if err != nil {
		return 0, 0
	}
	return parseSockstat(string(b), p)
}

func parseSockstat(text string, p tuple.Proto) (inuse, memBytes int64) {
	prefix := "TCP:"
	if p == tuple.UDP {
		prefix = "UDP:"
	}
	for line := range strings.SplitSeq(text, "\n") {
		rest, ok := strings.CutPrefix(line, prefix)
		if !ok {
			continue
		}
		f := strings.Fields(rest)
		for i := 0; i+1 < len(f); i += 2 {
			n, _ := strconv.ParseInt(f[i+1], 10, 64)
			switch f[i] {
			case "inuse":
				inuse = n
			case "mem":
				memBytes = n * int64(pageSize())
			}
		}
	}
	return inuse, memBytes
}

func pageSize() int { return os.Getpagesize() }
