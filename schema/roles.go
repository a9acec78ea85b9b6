package schema

import _ "embed"

// RolesSQL creates the least-privilege roles jobstream_reader (REPLICATION and
// SELECT on jobs) and jobstream_worker (what the step protocol needs and no
// more). Run it as a superuser after Migrate; it is idempotent.
//
//go:embed roles.sql
var RolesSQL string
