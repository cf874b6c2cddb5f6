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

// ephemeralRange returns the network namespace's ip_local_port_range.
func ephemeralRange() (tuple.PortRange, bool) {
	b, err := os.ReadFile("/proc/sys/net/ipv4/ip_local_port_range")
	if err != nil {
		return tuple.PortRange{}, false
	}
	f := strings.Fields(string(b))
	if len(f) != 2 {
		return tuple.PortRange{}, false
	}
	lo, err1 := strconv.ParseUint(f[0], 10, 16)
	hi, err2 := strconv.ParseUint(f[1], 10, 16)
	if err1 != nil || err2 != nil || lo > hi {
		return tuple.PortRange{}, false
	}
	return tuple.PortRangeFrom(uint16(lo), uint16(hi)), true
}

// portNotes explains port sets the kernel cannot confine connections to:
// ports outside ip_local_port_range, and ports below 1024 without root.
func portNotes(ports tuple.PortSet) []string {
	var notes []string
	if eph, ok := ephemeralRange(); ok && !tuple.PortSetOf(eph).ContainsSet(ports) {
		notes = append(notes, "the port set "+ports.String()+" is not inside net.ipv4.ip_local_port_range ("+eph.String()+
			"): IP_LOCAL_PORT_RANGE only narrows that range, so the portspace dialer falls back to its user-space port search")
	}
	if lo := ports.Bounds().First(); lo < 1024 && os.Geteuid() != 0 {
		notes = append(notes, "the port set "+ports.String()+" holds ports below 1024, which only root (CAP_NET_BIND_SERVICE) may bind")
	}
	return notes
}
