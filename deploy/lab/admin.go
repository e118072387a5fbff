package lab

import "net/netip"

// AdminUser is the lab's administrative role (SUPERUSER LOGIN, with
// AdminPassword, a lab secret like Password): the role xlb promotes,
// repoints and fences nodes as (pg_promote, ALTER SYSTEM, pg_reload_conf,
// pg_terminate_backend, replication slots) and xlb pg rejoin runs
// pg_rewind as. Every lab cluster gets it at bootstrap; pg_hba.conf admits
// it from the lab's network with scram-sha-256, like the other roles.
const (
	AdminUser     = "xlbadmin"
	AdminPassword = "xlbadmintest123"
)

// AdminConn returns the lab's administrative credentials on host:port, in
// the postgres database.
func AdminConn(host netip.Addr, port int) ConnInfo {
	return ConnInfo{Host: host.String(), Port: port, User: AdminUser, Password: AdminPassword, Database: "postgres"}
}
