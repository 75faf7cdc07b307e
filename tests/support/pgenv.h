/*
 * pgenv.h — a private PostgreSQL server for integration tests: initdb in a
 * temp dir, the server on a free loopback port (unix socket in the same
 * dir), one database; stopped and removed at exit even when a test fails.
 * Run as root, the server runs as the `postgres` system user.
 */
#ifndef POLIS_PGENV_H
#define POLIS_PGENV_H

#include <libpq-fe.h>

#include <stddef.h>

typedef struct pgenv pgenv;

/*
 * initdb (UTF8, C locale, trust authentication, superuser "postgres"),
 * start the server, create database `dbname`.  The binaries come from
 * $POLIS_PG_BINDIR, else /usr/lib/postgresql/15/bin.  On failure prints
 * why (with the server log's tail) to stderr and returns NULL.  Free with
 * pgenv_stop(); whatever is still running at exit is stopped then.
 */
pgenv *pgenv_start(const char *dbname);

/* Stop the server (fast shutdown, then SIGKILL) and free; NULL is a no-op.
 * The directory goes at exit (testenv_tmpdir). */
void pgenv_stop(pgenv *pg);

int pgenv_port(const pgenv *pg);

/* "host=127.0.0.1 port=N dbname=D user=U" into buf; returns buf. */
char *pgenv_dsn(const pgenv *pg, const char *user, char *buf, size_t len);

/* A connection to the test database as `user` (trust auth), or NULL
 * (message on stderr).  Caller closes with PQfinish. */
PGconn *pgenv_connect(const pgenv *pg, const char *user);

/* Run `sql` (one or more statements, simple protocol) as `user`; 0, or -1
 * with PostgreSQL's message on stderr. */
int pgenv_exec(const pgenv *pg, const char *user, const char *sql);

#endif
