package postgres

import (
	"strings"

	"github.com/jackc/pgx/v5"
)

// quoteIdent quotes s as an SQL identifier with pgx: "s", inner quotes
// doubled, NUL bytes dropped.
func quoteIdent(s string) string { return pgx.Identifier{s}.Sanitize() }

// quoteLiteral quotes s as an SQL string literal as PostgreSQL's
// quote_literal does: inner quotes doubled, and when s holds a backslash,
// an E'...' literal with backslashes doubled, which reads the same whatever
// standard_conforming_strings is.
func quoteLiteral(s string) string {
	q := strings.ReplaceAll(s, "'", "''")
	if strings.Contains(s, `\`) {
		return `E'` + strings.ReplaceAll(q, `\`, `\\`) + `'`
	}
	return "'" + q + "'"
}
