package authz

import (
	"strings"

	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	cpv1 "github.com/fourover6/fourover6/proto/fourover6/controlplane/v1"
	dpv1 "github.com/fourover6/fourover6/proto/fourover6/dataplane/v1"
)

// Class is what a method does, which decides who may call it.
type Class uint8

const (
	classUnset Class = iota
	// Status: harmless facts about the daemon itself (version,
	// leadership, health). Every role but none; a data plane needs them to
	// find the leading controller.
	Status
	// Lease: the data planes' LeaseService. Data planes and operators.
	Lease
	// Read: everything else that only reads (List*, Get*, Watch*).
	// Viewers and operators.
	Read
	// Change: changes state, or hands it all out (a backup). Operators
	// only, and audited (a log line and a counter for every call).
	Change
)

var classNames = [...]string{classUnset: "unset", Status: "status", Lease: "lease", Read: "read", Change: "change"}

func (c Class) String() string {
	if int(c) < len(classNames) {
		return classNames[c]
	}
	return "class(?)"
}

// allowed lists the roles that may call each class.
var allowed = [...][]Role{
	Status: {RoleDataplane, RoleViewer, RoleOperator},
	Lease:  {RoleDataplane, RoleOperator},
	Read:   {RoleViewer, RoleOperator},
	Change: {RoleOperator},
}

// Allows reports whether role r may call methods of class c.
func (c Class) Allows(r Role) bool {
	if int(c) >= len(allowed) {
		return false
	}
	for _, a := range allowed[c] {
		if a == r {
			return true
		}
	}
	return false
}

// needs names the roles of c for a message: "the operator role", "the
// dataplane or operator role".
func (c Class) needs() string {
	if int(c) >= len(allowed) || len(allowed[c]) == 0 {
		return "a role this daemon has no rule for"
	}
	names := make([]string, len(allowed[c]))
	for i, r := range allowed[c] {
		names[i] = r.String()
	}
	if len(names) == 1 {
		return "the " + names[0] + " role"
	}
	return "the " + strings.Join(names[:len(names)-1], ", ") + " or " + names[len(names)-1] + " role"
}

// ClassOf is the class of a method by its full gRPC name
// ("/fourover6.controlplane.v1.ControllerService/SetDNS"); classUnset
// when it has no rule.
func ClassOf(fullMethod string) Class { return rules[fullMethod] }

// rules is the class of every method the daemons serve, by full gRPC
// method name. A method without an entry is refused to everyone (a test
// walks the service descriptors so that a new RPC cannot ship without
// one). A new state-changing call is one line here, as Change: it is then
// operator-only and audited.
var rules = map[string]Class{
	// The controller: what data planes call.
	cpv1.LeaseService_RegisterDataplane_FullMethodName:   Lease,
	cpv1.LeaseService_AllocateAddress_FullMethodName:     Lease,
	cpv1.LeaseService_ReleaseAddress_FullMethodName:      Lease,
	cpv1.LeaseService_ReportSessions_FullMethodName:      Lease,
	cpv1.LeaseService_Heartbeat_FullMethodName:           Lease,
	cpv1.LeaseService_WatchCommands_FullMethodName:       Lease,
	cpv1.LeaseService_ReleaseAddresses_FullMethodName:    Lease,
	cpv1.LeaseService_StreamSessionReport_FullMethodName: Lease,
	cpv1.LeaseService_StopDataplane_FullMethodName:       Lease,

	// The controller: what operators call.
	cpv1.ControllerService_GetStatus_FullMethodName:         Status,
	cpv1.ControllerService_GetVersion_FullMethodName:        Status,
	cpv1.ControllerService_ListClients_FullMethodName:       Read,
	cpv1.ControllerService_GetClient_FullMethodName:         Read,
	cpv1.ControllerService_GetPool_FullMethodName:           Read,
	cpv1.ControllerService_WatchClients_FullMethodName:      Read,
	cpv1.ControllerService_ListReservations_FullMethodName:  Read,
	cpv1.ControllerService_GetDNS_FullMethodName:            Read,
	cpv1.ControllerService_ListDataplanes_FullMethodName:    Read,
	cpv1.ControllerService_KickClient_FullMethodName:        Change,
	cpv1.ControllerService_SetReservation_FullMethodName:    Change,
	cpv1.ControllerService_DeleteReservation_FullMethodName: Change,
	cpv1.ControllerService_SetDNS_FullMethodName:            Change,
	cpv1.ControllerService_UpdatePool_FullMethodName:        Change,
	cpv1.ControllerService_DrainDataplane_FullMethodName:    Change,
	cpv1.ControllerService_SetLogLevel_FullMethodName:       Change,
	cpv1.ControllerService_RemoveDataplane_FullMethodName:   Change,
	cpv1.ControllerService_Backup_FullMethodName:            Change,

	// The data plane's own API.
	dpv1.DataplaneService_GetStatus_FullMethodName:    Read,
	dpv1.DataplaneService_ListSessions_FullMethodName: Read,
	dpv1.DataplaneService_KickSession_FullMethodName:  Change,
	dpv1.DataplaneService_SetDraining_FullMethodName:  Change,
	dpv1.DataplaneService_SetLogLevel_FullMethodName:  Change,
	dpv1.DataplaneService_Upgrade_FullMethodName:      Change,
	// A capture hands out a client's traffic: operators only, audited.
	dpv1.DataplaneService_CaptureClient_FullMethodName: Change,

	// Both daemons serve gRPC health.
	healthpb.Health_Check_FullMethodName: Status,
	healthpb.Health_List_FullMethodName:  Status,
	healthpb.Health_Watch_FullMethodName: Status,
}
