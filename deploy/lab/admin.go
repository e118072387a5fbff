package lab

// AdminUser is the lab's administrative role (SUPERUSER LOGIN, with
// Secrets.AdminPassword): the role xlb promotes, repoints and fences nodes
// as (pg_promote, ALTER SYSTEM, pg_reload_conf, pg_terminate_backend,
// replication slots) and xlb pg rejoin runs pg_rewind as. Every lab cluster
// gets it at bootstrap; pg_hba.conf admits it from the lab's network with
// scram-sha-256, like the other roles.
const AdminUser = "xlbadmin"
