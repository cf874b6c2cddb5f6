package acl

import (
	"bytes"
	"encoding/json"
	"fmt"
	"net/netip"
	"slices"
	"strconv"
	"strings"
	"testing"
)

// shapePolicy has every kind of rule: TCP and UDP ports, ICMP, all
// protocols, IPv4 and IPv6, internet and the VPC deny.
const shapePolicy = `
vpc: [10.50.0.0/16, "2001:db8:50::/56"]
services:
  - {name: https, protocol: tcp, ports: [443]}
  - {name: dns, ports: [53/udp, 53/tcp]}
  - {name: ping, protocol: icmp}
zones:
  - {name: web, type: internal, cidrs: [10.50.1.0/24, "2001:db8:50:1::/64"]}
  - {name: app, type: internal, cidrs: [10.50.2.0/24, "2001:db8:50:2::/64"]}
  - {name: ops-net, type: internal, cidrs: [10.50.3.0/24]}
flows:
  - {from: internet, to: web, services: [https, ping], tags: [+ephemeral_loose]}
  - {from: web, to: app, services: [https, dns]}
  - {from: ops-net, to: app}
`

// shapeResults returns the generated ACLs of shapePolicy and of the golden
// samples that bind every zone.
func shapeResults(t *testing.T) map[string]*Result {
	t.Helper()
	out := map[string]*Result{}
	p, err := ParsePolicy("shape.yaml", []byte(shapePolicy))
	if err != nil {
		t.Fatal(err)
	}
	if out["shape"], err = Generate(p, Options{}); err != nil {
		t.Fatal(err)
	}
	for _, c := range goldenCases {
		if c.cidrs == "" && strings.HasSuffix(c.policy, ".ng") {
			continue // unbound: no aws-json or CloudFormation
		}
		if out[c.name], err = Generate(loadCase(t, c), Options{}); err != nil {
			t.Fatal(err)
		}
	}
	return out
}

// checkEntry checks one network ACL entry against the rules of the EC2
// CreateNetworkAclEntry API (and CloudFormation's AWS::EC2::NetworkAclEntry,
// which has the same members with Icmp for IcmpTypeCode and an integer
// protocol): the protocol is -1 (all, no ports), 6 or 17 (with PortRange),
// 1 or 58 (ICMP or ICMPv6, with the ICMP type and code); exactly one of
// CidrBlock and Ipv6CidrBlock, of the family the protocol implies; rule
// numbers 1-32766.
func checkEntry(e map[string]any, members []string, icmpKey, proto string) error {
	for k := range e {
		if !slices.Contains(members, k) {
			return fmt.Errorf("member %q is not one of %v", k, members)
		}
	}
	for _, k := range []string{"NetworkAclId", "RuleNumber", "Protocol", "RuleAction", "Egress"} {
		if _, ok := e[k]; !ok {
			return fmt.Errorf("required member %s missing", k)
		}
	}
	if n, ok := e["RuleNumber"].(float64); !ok || n < 1 || n > 32766 || n != float64(int(n)) {
		return fmt.Errorf("RuleNumber %v: want an integer 1-32766", e["RuleNumber"])
	}
	if a := e["RuleAction"]; a != "allow" && a != "deny" {
		return fmt.Errorf("RuleAction %v", a)
	}
	if _, ok := e["Egress"].(bool); !ok {
		return fmt.Errorf("Egress %v is not a boolean", e["Egress"])
	}
	v4, has4 := e["CidrBlock"].(string)
	v6, has6 := e["Ipv6CidrBlock"].(string)
	if has4 == has6 {
		return fmt.Errorf("want exactly one of CidrBlock and Ipv6CidrBlock")
	}
	cidr := v4 + v6
	pr, err := netip.ParsePrefix(cidr)
	if err != nil || pr.Addr().Is4() != has4 || pr.Masked() != pr {
		return fmt.Errorf("CIDR %q does not fit its member", cidr)
	}
	_, hasPorts := e["PortRange"]
	_, hasICMP := e[icmpKey]
	switch proto {
	case "-1":
		if hasPorts || hasICMP {
			return fmt.Errorf("protocol -1 (all) with ports or ICMP type")
		}
	case "6", "17":
		pm, ok := e["PortRange"].(map[string]any)
		if !ok || len(pm) != 2 || hasICMP {
			return fmt.Errorf("protocol %s wants PortRange{From,To} only, got %v", proto, e["PortRange"])
		}
		from, ok1 := pm["From"].(float64)
		to, ok2 := pm["To"].(float64)
		if !ok1 || !ok2 || from < 0 || from > to || to > 65535 {
			return fmt.Errorf("PortRange %v", pm)
		}
	case "1", "58":
		im, ok := e[icmpKey].(map[string]any)
		if !ok || len(im) != 2 || im["Code"] == nil || im["Type"] == nil || hasPorts {
			return fmt.Errorf("protocol %s wants %s{Code,Type} only, got %v", proto, icmpKey, e[icmpKey])
		}
		if (proto == "58") != has6 {
			return fmt.Errorf("protocol %s with %s", proto, cidr)
		}
	default:
		return fmt.Errorf("protocol %q is not -1, 6, 17, 1 or 58", proto)
	}
	return nil
}

// TestAWSJSONShape checks every entry of the aws-json output against the
// EC2 CreateNetworkAclEntry input members and their constraints, and that
// rule numbers are unique per ACL and direction.
func TestAWSJSONShape(t *testing.T) {
	members := []string{"NetworkAclId", "RuleNumber", "Protocol", "RuleAction", "Egress",
		"CidrBlock", "Ipv6CidrBlock", "PortRange", "IcmpTypeCode"}
	for name, res := range shapeResults(t) {
		var b bytes.Buffer
		if err := Render(&b, res, "aws-json", name); err != nil {
			t.Fatal(err)
		}
		var entries []map[string]any
		if err := json.Unmarshal(b.Bytes(), &entries); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		want := 0
		for _, a := range res.ACLs {
			want += len(a.Ingress) + len(a.Egress)
		}
		if len(entries) != want || want == 0 {
			t.Errorf("%s: %d entries, want %d", name, len(entries), want)
		}
		seen := map[string]bool{}
		protos := map[string]bool{}
		for i, e := range entries {
			proto, ok := e["Protocol"].(string)
			if !ok {
				t.Errorf("%s entry %d: Protocol %v is not a string", name, i, e["Protocol"])
				continue
			}
			protos[proto] = true
			if err := checkEntry(e, members, "IcmpTypeCode", proto); err != nil {
				t.Errorf("%s entry %d %v: %v", name, i, e, err)
			}
			key := fmt.Sprint(e["NetworkAclId"], e["Egress"], e["RuleNumber"])
			if seen[key] {
				t.Errorf("%s: rule number used twice: %s", name, key)
			}
			seen[key] = true
		}
		if name == "shape" && len(protos) != 5 {
			t.Errorf("shape policy covers protocols %v, want -1, 1, 6, 17 and 58", protos)
		}
	}
}

// TestCloudFormationShape checks the CloudFormation template: each entry
// is an AWS::EC2::NetworkAclEntry with only that resource's properties,
// an integer Protocol, and a NetworkAclId that refers to an
// AWS::EC2::NetworkAcl of the template.
func TestCloudFormationShape(t *testing.T) {
	members := []string{"NetworkAclId", "RuleNumber", "Protocol", "RuleAction", "Egress",
		"CidrBlock", "Ipv6CidrBlock", "PortRange", "Icmp"}
	for name, res := range shapeResults(t) {
		var w bytes.Buffer
		if err := Render(&w, res, "cloudformation", name); err != nil {
			t.Fatal(err)
		}
		var tpl struct {
			Resources map[string]struct {
				Type       string
				Properties map[string]any
			}
		}
		if err := json.Unmarshal(w.Bytes(), &tpl); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		entries, acls := 0, 0
		for id, r := range tpl.Resources {
			switch r.Type {
			case "AWS::EC2::NetworkAcl":
				acls++
				continue
			case "AWS::EC2::NetworkAclEntry":
			default:
				t.Errorf("%s: resource %s has type %s", name, id, r.Type)
				continue
			}
			entries++
			p := r.Properties
			n, ok := p["Protocol"].(float64)
			if !ok || n != float64(int(n)) {
				t.Errorf("%s %s: Protocol %v is not an integer", name, id, p["Protocol"])
				continue
			}
			ref, _ := p["NetworkAclId"].(map[string]any)
			target, _ := ref["Ref"].(string)
			if tpl.Resources[target].Type != "AWS::EC2::NetworkAcl" || len(ref) != 1 {
				t.Errorf("%s %s: NetworkAclId %v does not refer to a NetworkAcl", name, id, p["NetworkAclId"])
			}
			if err := checkEntry(p, members, "Icmp", strconv.Itoa(int(n))); err != nil {
				t.Errorf("%s %s %v: %v", name, id, p, err)
			}
		}
		wantEntries := 0
		for _, a := range res.ACLs {
			wantEntries += len(a.Ingress) + len(a.Egress)
		}
		if entries != wantEntries || acls != len(res.ACLs) {
			t.Errorf("%s: %d entries and %d ACLs, want %d and %d", name, entries, acls, wantEntries, len(res.ACLs))
		}
	}
}

// TestCloudFormationIDClash checks that two resources that would get the
// same logical ID are an error, not one silently replacing the other.
func TestCloudFormationIDClash(t *testing.T) {
	p := mustPolicy(t, `
zones:
  - {name: web, type: internal, cidrs: [10.1.0.0/24]}
  - {name: webIngress1000, type: internal, cidrs: [10.2.0.0/24]}
flows: [{from: webIngress1000, to: web}]
`)
	res, err := Generate(p, Options{})
	if err != nil {
		t.Fatal(err)
	}
	var b bytes.Buffer
	err = Render(&b, res, "cloudformation", "t.yaml")
	if err == nil || !strings.Contains(err.Error(), "logical ID AclWebIngress1000") || b.Len() != 0 {
		t.Errorf("clashing logical IDs: err %v, %d bytes written", err, b.Len())
	}
}
