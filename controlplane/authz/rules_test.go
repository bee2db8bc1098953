package authz

import (
	"crypto/x509"
	"net/url"
	"strings"
	"testing"

	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/protobuf/reflect/protoreflect"
	"google.golang.org/protobuf/reflect/protoregistry"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// served are the services the daemons register.
var served = []*grpc.ServiceDesc{
	&cpv1.ControllerService_ServiceDesc, &cpv1.LeaseService_ServiceDesc,
	&dpv1.DataplaneService_ServiceDesc, &healthpb.Health_ServiceDesc,
}

// TestEveryMethodHasARule fails when an RPC is added without an entry in
// the method table, and when the table names a method nobody serves.
func TestEveryMethodHasARule(t *testing.T) {
	seen := map[string]bool{}
	for _, sd := range served {
		for _, m := range sd.Methods {
			seen["/"+sd.ServiceName+"/"+m.MethodName] = true
		}
		for _, s := range sd.Streams {
			seen["/"+sd.ServiceName+"/"+s.StreamName] = true
		}
	}
	// Every service of our proto packages, registered or not: a new
	// service must be served with a rule for each of its methods too.
	protoregistry.GlobalFiles.RangeFiles(func(fd protoreflect.FileDescriptor) bool {
		if !strings.HasPrefix(string(fd.Package()), "fourover6.") {
			return true
		}
		for i := range fd.Services().Len() {
			sd := fd.Services().Get(i)
			for j := range sd.Methods().Len() {
				seen["/"+string(sd.FullName())+"/"+string(sd.Methods().Get(j).Name())] = true
			}
		}
		return true
	})
	if len(seen) < 30 {
		t.Fatalf("only %d methods found: the proto packages are not linked in", len(seen))
	}
	for m := range seen {
		if ClassOf(m) == classUnset {
			t.Errorf("%s has no access rule: add it to rules in rules.go (Change if it changes state)", m)
		}
	}
	for m := range rules {
		if !seen[m] {
			t.Errorf("rule for %s, which no service has", m)
		}
	}
	// New accepts the daemons' sets.
	New(nil, &cpv1.ControllerService_ServiceDesc, &cpv1.LeaseService_ServiceDesc, &healthpb.Health_ServiceDesc)
	New(nil, &dpv1.DataplaneService_ServiceDesc, &healthpb.Health_ServiceDesc)
}

func TestNewRefusesAServiceWithoutRules(t *testing.T) {
	defer func() {
		if r := recover(); r == nil || !strings.Contains(r.(string), "/x.Y/Z has no access rule") {
			t.Fatalf("recovered %v", r)
		}
	}()
	New(nil, &grpc.ServiceDesc{ServiceName: "x.Y", Methods: []grpc.MethodDesc{{MethodName: "Z"}}})
}

// The data plane may find the leader but read nothing else; only Change is
// audited.
func TestClasses(t *testing.T) {
	want := map[Class]map[Role]bool{
		Status: {RoleDataplane: true, RoleViewer: true, RoleOperator: true},
		Lease:  {RoleDataplane: true, RoleOperator: true},
		Read:   {RoleViewer: true, RoleOperator: true},
		Change: {RoleOperator: true},
	}
	for c, roles := range want {
		for _, r := range []Role{RoleNone, RoleViewer, RoleDataplane, RoleOperator} {
			if c.Allows(r) != roles[r] {
				t.Errorf("%s allows %s: %v, want %v", c, r, c.Allows(r), roles[r])
			}
		}
	}
	if classUnset.Allows(RoleOperator) || Class(200).Allows(RoleOperator) {
		t.Error("a method without a rule is allowed")
	}
	for m, c := range map[string]Class{
		cpv1.ControllerService_GetStatus_FullMethodName:       Status,
		cpv1.ControllerService_ListClients_FullMethodName:     Read,
		cpv1.ControllerService_SetDNS_FullMethodName:          Change,
		cpv1.ControllerService_Backup_FullMethodName:          Change,
		cpv1.LeaseService_AllocateAddress_FullMethodName:      Lease,
		dpv1.DataplaneService_SetDraining_FullMethodName:      Change,
		dpv1.DataplaneService_ListSessions_FullMethodName:     Read,
		cpv1.ControllerService_RemoveDataplane_FullMethodName: Change,
	} {
		if ClassOf(m) != c {
			t.Errorf("%s is %s, want %s", m, ClassOf(m), c)
		}
	}
	if got := Lease.needs(); got != "the dataplane or operator role" {
		t.Errorf("Lease.needs() = %q", got)
	}
	if got := Status.needs(); got != "the dataplane, viewer or operator role" {
		t.Errorf("Status.needs() = %q", got)
	}
}

func TestRoleOf(t *testing.T) {
	u := func(s string) *url.URL {
		v, err := url.Parse(s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	for _, c := range []struct {
		uris []string
		want Role
	}{
		{nil, RoleNone},
		{[]string{"fourover6://role/operator"}, RoleOperator},
		{[]string{"fourover6://role/viewer"}, RoleViewer},
		{[]string{"fourover6://role/dataplane"}, RoleDataplane},
		{[]string{"spiffe://example.org/x", "fourover6://role/viewer"}, RoleViewer}, // other URIs are ignored
		{[]string{"fourover6://role/viewer", "fourover6://role/viewer"}, RoleViewer},
		{[]string{"fourover6://role/admin"}, RoleNone},                               // unknown
		{[]string{"fourover6://role/none"}, RoleNone},                                // not a role one can hold
		{[]string{"fourover6://role/viewer", "fourover6://role/operator"}, RoleNone}, // ambiguous
		{[]string{"fourover6://role/operator", "fourover6://role/bogus"}, RoleNone},  // ambiguous
		{[]string{"fourover6://other/operator"}, RoleNone},                           // not the role host
		{[]string{"https://role/operator"}, RoleNone},                                // not our scheme
		{[]string{"fourover6://role/operator/extra"}, RoleNone},                      // not a name
		{[]string{"fourover6://role/Operator"}, RoleNone},                            // names are exact
		{[]string{"fourover6://role/operator?x=1"}, RoleOperator},                    // a query changes nothing
	} {
		cert := &x509.Certificate{}
		for _, s := range c.uris {
			cert.URIs = append(cert.URIs, u(s))
		}
		if got := RoleOf(cert); got != c.want {
			t.Errorf("RoleOf(%v) = %s, want %s", c.uris, got, c.want)
		}
	}
	if RoleOf(nil) != RoleNone {
		t.Error("RoleOf(nil)")
	}
	for _, r := range Roles {
		cert := &x509.Certificate{URIs: []*url.URL{RoleURI(r)}}
		if RoleOf(cert) != r {
			t.Errorf("RoleURI(%s) = %s does not read back", r, RoleURI(r))
		}
		if p, err := ParseRole(r.String()); err != nil || p != r {
			t.Errorf("ParseRole(%s) = %s, %v", r, p, err)
		}
	}
	if got := RoleURI(RoleOperator).String(); got != "fourover6://role/operator" {
		t.Errorf("RoleURI(operator) = %s", got)
	}
	if _, err := ParseRole("none"); err == nil {
		t.Error("ParseRole(none) accepted")
	}
}

func TestUnixRule(t *testing.T) {
	const self, sock = 998, 4242
	for _, c := range []struct {
		uid, gid uint32
		groups   []uint32
		sockGID  int64
		want     Role
	}{
		{0, 0, nil, sock, RoleOperator},                     // root
		{0, 0, nil, -1, RoleOperator},                       // root, socket group unknown
		{self, 1, nil, sock, RoleOperator},                  // the daemon's own user
		{1000, sock, nil, sock, RoleOperator},               // primary group is the socket's
		{1000, 1000, []uint32{7, sock}, sock, RoleOperator}, // supplementary group
		{1000, 1000, []uint32{7}, sock, RoleViewer},
		{65534, 65534, nil, sock, RoleViewer},
		{1000, sock, nil, -1, RoleViewer}, // the socket's group unknown: only root and self
	} {
		got, why := unixRole(c.uid, c.gid, c.groups, self, c.sockGID)
		if got != c.want {
			t.Errorf("uid %d gid %d groups %v socket gid %d: %s, want %s", c.uid, c.gid, c.groups, c.sockGID, got, c.want)
		}
		if (got == RoleViewer) != (why != "") {
			t.Errorf("uid %d: role %s with why %q", c.uid, got, why)
		}
	}
	_, why := unixRole(1000, 1000, nil, self, sock)
	if !strings.Contains(why, "uid 1000") || !strings.Contains(why, "group 4242") {
		t.Errorf("why = %q", why)
	}
}
