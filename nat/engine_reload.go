package nat

import (
	"errors"
	"net/netip"
	"reflect"
)

// Reloadable lists the Config fields Reload can change on a running
// engine without dropping its sessions: the session timers (RFC 4787
// REQ-5, RFC 5382 REQ-5, RFC 5508 REQ-2, RFC 7857 §2.1; a session's new
// timer applies from its next packet), the refresh directions (RFC 4787
// REQ-6), the ICMP answers (RFC 5508 REQ-8, RFC 5382 REQ-4 silent drop)
// and the session limits (RFC 6888 REQ-5).
var Reloadable = []string{
	"UDPTimeout", "TCPEstablished", "TCPTransitory", "TCPClosing", "ICMPTimeout",
	"InboundRefresh", "NoOutboundRefresh", "NoICMPReplies", "SilentSYNDrop", "ReplySource",
	"MaxSessions", "MaxSessionsPerSubscriber",
}

// Reload applies cfg to the running engine when it differs from the
// engine's configuration only in Reloadable fields (Events, Logger,
// Secret and Seed are taken from the running engine). Otherwise, or when
// cfg is invalid, it returns a *ConfigError naming the first field at
// fault and the engine is unchanged.
func (e *Engine) Reload(cfg Config) error {
	cfg.Events, cfg.Logger, cfg.Secret, cfg.Seed = e.cfg.Events, e.cfg.Logger, e.cfg.Secret, e.cfg.Seed
	cfg.External = append([]netip.Addr(nil), cfg.External...)
	cfg.Internal = append([]netip.Prefix(nil), cfg.Internal...)
	cfg.NoTranslate = append([]netip.Prefix(nil), cfg.NoTranslate...)
	n, err := cfg.normalized()
	if err != nil {
		return err
	}
	ok := map[string]bool{}
	for _, f := range Reloadable {
		ok[f] = true
	}
	cur, next := reflect.ValueOf(e.cfg), reflect.ValueOf(n)
	t := cur.Type()
	for i := range t.NumField() {
		f := t.Field(i)
		if ok[f.Name] || f.Name == "Events" || f.Name == "Logger" {
			continue
		}
		a, b := cur.Field(i).Interface(), next.Field(i).Interface()
		if !reflect.DeepEqual(a, b) && !(isEmptySlice(cur.Field(i)) && isEmptySlice(next.Field(i))) {
			return &ConfigError{Field: f.Name, YAML: YAMLName(f.Name), Err: errors.New("cannot change on a running engine (a new engine is needed)")}
		}
	}
	e.cfg = n
	e.tmUDP, e.tmEst, e.tmTrans = secs(n.UDPTimeout), secs(n.TCPEstablished), secs(n.TCPTransitory)
	e.tmClose, e.tmICMP = secs(n.TCPClosing), secs(n.ICMPTimeout)
	return nil
}

func isEmptySlice(v reflect.Value) bool { return v.Kind() == reflect.Slice && v.Len() == 0 }
