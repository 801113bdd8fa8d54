// Package capture copies a legacy mailbox into the local store and keeps it
// converged: the legacy IMAP and POP3 clients, the copy and delta-sync
// engine, the per-account state machine, the job scheduler and cut-over.
//
// The store it writes to is package store; see ARCHITECTURE.md for how a
// capture flows and which invariants of docs/CONTRACT.md it enforces.
package capture
