package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"os"
	"strings"
	"time"

	"github.com/portspace/portspace/natlog"
	"github.com/portspace/portspace/portalloc"
	"github.com/portspace/portspace/tuple"
	"github.com/spf13/cobra"
)

func newNatWhoisCmd() *cobra.Command {
	var whois func(cmd *cobra.Command, args []string) error
	var (
		logs          []string
		strict        bool
		asJSON        bool
		deterministic bool
		inside        []string
		external      []string
		ports         string
		remote        string
	)
	c := &cobra.Command{
		Use:   "whois ADDR:PORT [TIME]",
		Short: "Which inside address held an external address:port at a time",
		Long: `Answer "who held external ADDR:PORT at TIME?" (RFC 6888 REQ-12, RFC 7422).

From the event log (JSON lines written by the engine's LogWriter):

  portspace nat whois --log events.jsonl 192.0.2.1:40000 2026-11-21T05:00:00Z

TIME is RFC 3339. Several --log files (rotated logs) are read in the order
given. A bad log line is reported as FILE:LINE on stderr and skipped; the
answer comes from the good lines (--strict fails at the first bad line
instead). With port overlapping (RFC 7857) several inside endpoints may share
one external endpoint at once; all of them are printed, unless the log has
destinations (engine LogDestinations) and --remote names the flow's remote
endpoint.

For a deterministic NAT (RFC 7422) the answer follows from the parameters
alone, no log and no TIME needed:

  portspace nat whois --deterministic --inside 100.64.0.0/20 \
      --external 192.0.2.1,192.0.2.2 --ports 1024-65535 192.0.2.1:5000

Exit status: 0 when a holder was found, 1 when nobody held the endpoint,
2 for an error (bad arguments, an unreadable log, a bad line with --strict).`,
		Args: func(cmd *cobra.Command, args []string) error {
			if err := cobra.RangeArgs(1, 2)(cmd, args); err != nil {
				return &exitError{2, fmt.Errorf("nat whois: %w", err)}
			}
			return nil
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			err := whois(cmd, args)
			switch {
			case err == nil:
				return nil
			case errors.Is(err, natlog.ErrNoHolder):
				return &exitError{1, err}
			}
			return &exitError{2, err}
		},
	}
	whois = func(cmd *cobra.Command, args []string) error {
		ext, err := netip.ParseAddrPort(args[0])
		if err != nil || !ext.Addr().Is4() {
			return fmt.Errorf("nat whois: external endpoint %q: want IPv4 ADDR:PORT", args[0])
		}
		out := cmd.OutOrStdout()
		if deterministic {
			if len(logs) > 0 {
				return errors.New("nat whois: --deterministic and --log exclude each other")
			}
			d, err := deterministicFromFlags(inside, external, externalFlag(cmd), ports)
			if err != nil {
				return err
			}
			h, err := natlog.WhoisDeterministic(d, ext)
			if err != nil {
				return err
			}
			return printHoldings(out, []natlog.Holding{h}, asJSON)
		}
		if len(args) != 2 {
			return errors.New("nat whois: TIME (RFC 3339) is required with --log")
		}
		when, err := time.Parse(time.RFC3339Nano, args[1])
		if err != nil {
			return fmt.Errorf("nat whois: time %q: want RFC 3339, e.g. 2026-11-21T05:00:00Z", args[1])
		}
		if len(logs) == 0 {
			return errors.New("nat whois: give --log FILE (or --deterministic with its parameters)")
		}
		ix := natlog.NewIndexFor(ext) // keeps only the events about ext
		bad := 0
		for _, name := range logs {
			if err := readLogInto(ix, name, cmd.InOrStdin(), cmd.ErrOrStderr(), strict, &bad); err != nil {
				return err
			}
		}
		if bad > 0 {
			fmt.Fprintf(cmd.ErrOrStderr(), "warning: %d bad log line(s) skipped\n", bad)
		}
		var hs []natlog.Holding
		if remote != "" {
			r, perr := netip.ParseAddrPort(remote)
			if perr != nil {
				return fmt.Errorf("nat whois: --remote %q: want ADDR:PORT", remote)
			}
			hs, err = ix.WhoisRemote(ext, r, when)
		} else {
			hs, err = ix.Whois(ext, when)
		}
		if err != nil {
			return err
		}
		return printHoldings(out, hs, asJSON)
	}
	c.SetFlagErrorFunc(func(_ *cobra.Command, err error) error { return &exitError{2, fmt.Errorf("nat whois: %w", err)} })
	f := c.Flags()
	f.StringArrayVar(&logs, "log", nil, "event log file (JSON lines; \"-\" = stdin); repeat for rotated logs, oldest first")
	f.StringVar(&remote, "remote", "", "only the flow to this remote ADDR:PORT (needs a log with destinations)")
	f.BoolVar(&strict, "strict", false, "fail at the first bad log line instead of skipping it")
	f.BoolVar(&asJSON, "json", false, "print the holdings as JSON")
	f.BoolVar(&deterministic, "deterministic", false, "answer from RFC 7422 deterministic parameters instead of a log")
	f.StringSliceVar(&inside, "inside", nil, "deterministic: inside IPv4 prefixes, in configuration order")
	f.StringSliceVar(&external, "external", nil, "deterministic: external IPv4 addresses, in configuration order (alias --outside)")
	f.StringSliceVar(&external, "outside", nil, "alias of --external")
	_ = f.MarkHidden("outside")
	f.StringVar(&ports, "ports", "1024-65535", "deterministic: external port range")
	return c
}

func readLogInto(ix *natlog.Index, name string, stdin io.Reader, stderr io.Writer, strict bool, bad *int) error {
	var r io.Reader = stdin
	if name != "-" {
		fh, err := os.Open(name)
		if err != nil {
			return fmt.Errorf("nat whois: %w", err)
		}
		defer fh.Close()
		r = fh
	}
	return ix.ReadFrom(natlog.NewLogReader(r, name), func(e *natlog.LogError) error {
		if strict {
			return e
		}
		*bad++
		fmt.Fprintf(stderr, "warning: %v (skipped)\n", e)
		return nil
	})
}

// externalFlag returns the spelling of the external-addresses flag the user
// typed (--external, or its alias --outside), for error messages.
func externalFlag(cmd *cobra.Command) string {
	if cmd.Flags().Changed("outside") {
		return "--outside"
	}
	return "--external"
}

func deterministicFromFlags(inside, outside []string, extFlag, ports string) (*portalloc.Deterministic, error) {
	if len(inside) == 0 || len(outside) == 0 {
		return nil, errors.New("nat whois: --deterministic needs --inside and --external")
	}
	var in []netip.Prefix
	for _, s := range inside {
		p, err := netip.ParsePrefix(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("nat whois: --inside %q: %w", s, err)
		}
		in = append(in, p)
	}
	var out []netip.Addr
	for _, s := range outside {
		a, err := netip.ParseAddr(strings.TrimSpace(s))
		if err != nil {
			return nil, fmt.Errorf("nat whois: %s %q: %w", extFlag, s, err)
		}
		out = append(out, a)
	}
	pr, err := tuple.ParsePortRange(ports)
	if err != nil {
		return nil, fmt.Errorf("nat whois: --ports: %w", err)
	}
	d, err := portalloc.NewDeterministic(in, out, pr)
	if err != nil {
		return nil, fmt.Errorf("nat whois: --deterministic: %w", err)
	}
	return d, nil
}

type holdingJSON struct {
	Proto      string `json:"proto,omitempty"`
	Subscriber string `json:"subscriber"`
	Internal   string `json:"internal,omitempty"`
	External   string `json:"external"`
	Remote     string `json:"remote,omitempty"`
	Block      string `json:"block,omitempty"`
	From       string `json:"from,omitempty"`
	To         string `json:"to,omitempty"`
	Open       bool   `json:"open"`
	Reason     string `json:"reason,omitempty"`
	// Deterministic: RFC 7422 parameters, not a log, say who holds it
	// (then there is no from, to or open).
	Deterministic bool `json:"deterministic,omitempty"`
}

func printHoldings(w io.Writer, hs []natlog.Holding, asJSON bool) error {
	if !asJSON {
		for _, h := range hs {
			fmt.Fprintln(w, h.String())
		}
		if n := distinctSubscribers(hs); n > 1 {
			fmt.Fprintf(w, "note: %d different subscribers held it at that time (port overlapping or several protocols); without destination logging the log cannot say whose flow a given packet was\n", n)
		}
		return nil
	}
	out := make([]holdingJSON, 0, len(hs))
	for _, h := range hs {
		j := holdingJSON{Subscriber: h.Subscriber.String(), Open: h.Open() && !h.Deterministic, Reason: h.Reason,
			Deterministic: h.Deterministic}
		if h.Remote.IsValid() {
			j.Remote = h.Remote.String()
		}
		if h.Proto != 0 {
			j.Proto = h.Proto.String()
		}
		if h.Internal.IsValid() {
			j.Internal = h.Internal.String()
		}
		if h.IsBlock && h.External.Port() == 0 {
			j.External = h.External.Addr().String()
		} else {
			j.External = h.External.String()
		}
		if h.Block.IsValid() {
			j.Block = h.Block.String()
		}
		if !h.From.IsZero() {
			j.From = h.From.UTC().Format(time.RFC3339Nano)
		}
		if !h.To.IsZero() {
			j.To = h.To.UTC().Format(time.RFC3339Nano)
		}
		out = append(out, j)
	}
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	return enc.Encode(out)
}

func distinctSubscribers(hs []natlog.Holding) int {
	seen := map[netip.Addr]bool{}
	for _, h := range hs {
		seen[h.Subscriber] = true
	}
	return len(seen)
}
