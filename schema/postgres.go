package schema

import (
	"errors"
	"fmt"
	"strings"

	"github.com/jackc/pgx/v5/pgconn"
)

// PostgresUnreachable turns a failed connection attempt into one sentence
// naming the fix. When the server answered with an error (a role or
// database that does not exist, a wrong password), that is the cause: with
// sslmode=prefer pgx tries TLS first, and its "server refused TLS
// connection" before the plaintext attempt says nothing about it.
// Otherwise pgx reports one line per address tried; the first attempt that
// is not the refused TLS of a fallback says it.
func PostgresUnreachable(err error) error {
	var pgErr *pgconn.PgError
	if errors.As(err, &pgErr) {
		return fmt.Errorf("cannot connect to Postgres: the server says %s (SQLSTATE %s); %s", pgErr.Message, pgErr.Code, connectFix(pgErr.Code))
	}
	lines := strings.Split(err.Error(), "\n")
	msg := lines[0]
	var attempts []string
	for _, l := range lines[1:] {
		if l = strings.TrimSpace(l); l != "" {
			attempts = append(attempts, l)
		}
	}
	for i, a := range attempts {
		if !strings.Contains(a, "server refused TLS connection") || i == len(attempts)-1 {
			msg += " " + a
			break
		}
	}
	return fmt.Errorf("cannot connect to Postgres (%s); check DATABASE_URL and that the server is up", msg)
}

// connectFix names the fix for an error the server gave at connection.
func connectFix(code string) string {
	switch code {
	case "28000": // invalid_authorization_specification: no such role, or no pg_hba.conf entry
		return "check the user in DATABASE_URL (and, for a pg_hba.conf refusal, the server's pg_hba.conf)"
	case "28P01": // invalid_password
		return "check the user and password in DATABASE_URL"
	case "3D000": // invalid_catalog_name
		return "check the database name in DATABASE_URL, or create it with createdb"
	case "42501": // insufficient_privilege
		return "grant the user CONNECT on the database, or use another user in DATABASE_URL"
	case "53300": // too_many_connections
		return "the server has no free connection slot; close idle clients or raise max_connections"
	case "57P03": // cannot_connect_now
		return "the server is starting or shutting down; try again in a moment"
	}
	return "check DATABASE_URL"
}
