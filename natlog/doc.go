// Package natlog keeps the event log of a nat.Engine and answers from it who
// held an external endpoint at a given time (RFC 6888 §4 REQ-12, RFC 7422
// §2): LogWriter is a nat.EventSink that writes one JSON object per event and
// line, LogReader and ParseEventJSON read such a log back, Index keeps the
// holdings of external endpoints over time, and Whois and WhoisDeterministic
// trace an external endpoint back to its subscriber.
//
// The package uses only the exported API of package nat (nat.Event and
// nat.EventSink); an engine runs without it when no log is wanted.
package natlog
