/*
 * tlscert.h — throwaway certificates for TLS tests, made with the openssl
 * command-line tool (P-256 keys, valid 2 days) as files in a directory of
 * the test's, and a runner for such tools (openssl, mosquitto_passwd).
 */
#ifndef POLIS_TLSCERT_H
#define POLIS_TLSCERT_H

/*
 * Run argv (argv[0] looked up on PATH) to completion, its output appended
 * to <dir>/tools.log; 0 when it exits 0 within 20 s, else -1 with the
 * log's tail on stderr.
 */
int tlscert_run(const char *dir, const char *const argv[]);

/* A self-signed CA: <dir>/<name>.crt and <dir>/<name>.key.  0 or -1. */
int tlscert_ca(const char *dir, const char *name);

/*
 * <dir>/<name>.key and <dir>/<name>.crt for subject `subj` ("/CN=x"),
 * signed by the CA <dir>/<ca>.crt + .key, with the extension lines `ext`
 * ("subjectAltName=IP:127.0.0.1,DNS:localhost\n").  0 or -1.
 */
int tlscert_issue(const char *dir, const char *name, const char *ca,
                  const char *subj, const char *ext);

#endif
