package store

import (
	"context"
	"database/sql"
	"database/sql/driver"
	"errors"
	"fmt"
	"io"
)

// queryAll runs a query and scans every row with scan.
func queryAll[T any](ctx context.Context, q queryer, scan func(interface{ Scan(...any) error }) (T, error), query string, args ...any) ([]T, error) {
	rows, err := q.QueryContext(ctx, query, args...)
	if err != nil {
		return nil, err
	}
	defer rows.Close()
	var out []T
	for rows.Next() {
		v, err := scan(rows)
		if err != nil {
			return nil, err
		}
		out = append(out, v)
	}
	return out, rows.Err()
}

// execOne runs a statement that must change exactly one row; ErrNotFound
// if it changed none.
func execOne(ctx context.Context, tx *sql.Tx, query string, args ...any) error {
	res, err := tx.ExecContext(ctx, query, args...)
	if err != nil {
		return err
	}
	if n, err := res.RowsAffected(); err != nil {
		return err
	} else if n != 1 {
		return ErrNotFound
	}
	return nil
}

// queryRaw runs a query on one connection of db and calls row with each
// row's values as the driver gives them (int64, float64, string, []byte
// or nil), valid only during the call. It is for the reads of a whole big
// mailbox that a client waits for: there database/sql's conversion of
// each value costs as much as SQLite's own work.
func queryRaw(ctx context.Context, db *sql.DB, query string, args []any, row func([]driver.Value) error) error {
	named := make([]driver.NamedValue, len(args))
	for i, a := range args {
		v, err := driver.DefaultParameterConverter.ConvertValue(a)
		if err != nil {
			return fmt.Errorf("argument %d: %w", i+1, err)
		}
		named[i] = driver.NamedValue{Ordinal: i + 1, Value: v}
	}
	conn, err := db.Conn(ctx)
	if err != nil {
		return err
	}
	defer conn.Close()
	return conn.Raw(func(dc any) error {
		q, ok := dc.(driver.QueryerContext)
		if !ok {
			return errors.New("the database driver cannot query a connection directly")
		}
		rows, err := q.QueryContext(ctx, query, named)
		if err != nil {
			return err
		}
		defer rows.Close()
		dest := make([]driver.Value, len(rows.Columns()))
		for {
			if err := rows.Next(dest); err == io.EOF {
				return nil
			} else if err != nil {
				return err
			}
			if err := row(dest); err != nil {
				return err
			}
		}
	})
}

// rawInts stores integer values from queryRaw into into, in order; false
// if one is not an integer.
func rawInts(values []driver.Value, into ...*int64) bool {
	for i, v := range values {
		n, ok := v.(int64)
		if !ok {
			return false
		}
		*into[i] = n
	}
	return true
}

// rawText is a text value from queryRaw; false if it is neither text nor
// a blob.
func rawText(v driver.Value) (string, bool) {
	switch t := v.(type) {
	case string:
		return t, true
	case []byte:
		return string(t), true
	}
	return "", false
}
