package postgres

import "strings"

// quoteIdent quotes s as an SQL identifier: "s", inner quotes doubled.
func quoteIdent(s string) string { return `"` + strings.ReplaceAll(s, `"`, `""`) + `"` }

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
