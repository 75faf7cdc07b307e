/*
 * pgenv.c — a private PostgreSQL server for tests (pgenv.h).  PostgreSQL
 * refuses to run as root, so a root test runs initdb and the server as the
 * `postgres` system user (setuid in the forked child) in a temp dir it owns.
 */
#include "tests/support/pgenv.h"
#include "tests/support/testenv.h"

#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <pthread.h>
#include <pwd.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define PGENV_MAX 8

struct pgenv {
    pid_t pid;
    int port;
    char dir[512];
    char log[600];
    char dbname[64];
};

/* Servers still running, stopped by the exit handler. */
static pgenv *live[PGENV_MAX];
static pthread_mutex_t live_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t live_once = PTHREAD_ONCE_INIT;

static void nap_ms(int ms)
{
    struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};
    nanosleep(&ts, NULL);
}

/* SIGINT is PostgreSQL's fast shutdown: it ends the sessions and exits. */
static void server_stop(pgenv *pg)
{
    if (pg->pid <= 0)
        return;
    kill(pg->pid, SIGINT);
    for (int i = 0; i < 200; i++) {
        if (waitpid(pg->pid, NULL, WNOHANG) != 0) {
            pg->pid = 0;
            return;
        }
        nap_ms(50);
    }
    kill(pg->pid, SIGKILL);
    waitpid(pg->pid, NULL, 0);
    pg->pid = 0;
}

static void at_exit_stop(void)
{
    pthread_mutex_lock(&live_mu);
    for (int i = 0; i < PGENV_MAX; i++) {
        if (live[i]) {
            server_stop(live[i]);
            free(live[i]);
            live[i] = NULL;
        }
    }
    pthread_mutex_unlock(&live_mu);
}

static void live_init(void)
{
    atexit(at_exit_stop);
}

static const char *bindir(void)
{
    const char *d = getenv("POLIS_PG_BINDIR");
    return d && *d ? d : "/usr/lib/postgresql/15/bin";
}

/*
 * Fork and exec bindir/argv[0] with output appended to the log, as the
 * postgres user when we are root.  The child dies with us: the death signal
 * is set after setuid, which clears it.
 */
static pid_t spawn(pgenv *pg, const char *const argv[])
{
    struct passwd *pw = NULL;
    char path[700];
    pid_t parent = getpid(), pid;
    int logfd;

    if (geteuid() == 0 && (pw = getpwnam("postgres")) == NULL) {
        fprintf(stderr, "pgenv: running as root and there is no postgres "
                        "user to run PostgreSQL as\n");
        return -1;
    }
    snprintf(path, sizeof(path), "%s/%s", bindir(), argv[0]);
    logfd = open(pg->log, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
    if (logfd < 0) {
        fprintf(stderr, "pgenv: %s: %s\n", pg->log, strerror(errno));
        return -1;
    }
    pid = fork();
    if (pid == 0) {
        int devnull = open("/dev/null", O_RDONLY);

        if (pw && (setgroups(0, NULL) != 0 || setgid(pw->pw_gid) != 0 ||
                   setuid(pw->pw_uid) != 0))
            _exit(126);
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        if (getppid() != parent)
            _exit(127);
        if (devnull >= 0)
            dup2(devnull, 0);
        dup2(logfd, 1);
        dup2(logfd, 2);
        for (int fd = 3; fd < 1024; fd++)
            close(fd);
        if (chdir(pg->dir) != 0)
            _exit(126);
        execv(path, (char *const *)argv);
        _exit(127);
    }
    close(logfd);
    if (pid < 0)
        fprintf(stderr, "pgenv: fork: %s\n", strerror(errno));
    return pid;
}

static void print_log(const pgenv *pg, const char *what)
{
    char *tail = testenv_file_tail(pg->log, 3000);
    fprintf(stderr, "pgenv: %s; log %s:\n%s\n", what, pg->log,
            tail ? tail : "");
    free(tail);
}

char *pgenv_dsn(const pgenv *pg, const char *user, char *buf, size_t len)
{
    snprintf(buf, len, "host=127.0.0.1 port=%d dbname=%s user=%s", pg->port,
             pg->dbname, user);
    return buf;
}

/* Start the server on a fresh port and wait until it answers; 0 or -1. */
static int server_start(pgenv *pg, const char *data)
{
    char port[16], sock[600], conninfo[256];

    pg->port = testenv_free_port();
    if (pg->port < 0)
        return -1;
    snprintf(port, sizeof(port), "%d", pg->port);
    snprintf(sock, sizeof(sock), "unix_socket_directories=%s", pg->dir);
    {
        /* The tests need no durability: skip every fsync. */
        const char *argv[] = {"postgres",
                              "-D",
                              data,
                              "-p",
                              port,
                              "-c",
                              sock,
                              "-c",
                              "listen_addresses=127.0.0.1",
                              "-c",
                              "fsync=off",
                              "-c",
                              "full_page_writes=off",
                              "-c",
                              "max_connections=40",
                              NULL};
        pg->pid = spawn(pg, argv);
    }
    if (pg->pid < 0)
        return -1;
    snprintf(conninfo, sizeof(conninfo),
             "host=127.0.0.1 port=%d dbname=postgres user=postgres "
             "connect_timeout=2",
             pg->port);
    for (int i = 0; i < 300; i++) {
        if (PQping(conninfo) == PQPING_OK)
            return 0;
        if (waitpid(pg->pid, NULL, WNOHANG) != 0) {
            pg->pid = 0;
            return -1;
        }
        nap_ms(100);
    }
    server_stop(pg);
    return -1;
}

pgenv *pgenv_start(const char *dbname)
{
    char data[600], sql[128];
    const char *dir;
    pgenv *pg;
    int status, slot = -1;
    pid_t pid;
    PGconn *c;

    pthread_once(&live_once, live_init);
    if (dbname == NULL || strlen(dbname) >= sizeof(pg->dbname))
        return NULL;
    dir = testenv_tmpdir("pg");
    pg = calloc(1, sizeof(*pg));
    if (dir == NULL || pg == NULL) {
        fprintf(stderr, "pgenv: no temp dir\n");
        free(pg);
        return NULL;
    }
    snprintf(pg->dir, sizeof(pg->dir), "%s", dir);
    snprintf(pg->log, sizeof(pg->log), "%s/postgres.log", dir);
    snprintf(pg->dbname, sizeof(pg->dbname), "%s", dbname);
    snprintf(data, sizeof(data), "%s/data", dir);
    if (geteuid() == 0) {
        struct passwd *pw = getpwnam("postgres");
        if (pw == NULL || chown(dir, pw->pw_uid, pw->pw_gid) != 0) {
            fprintf(stderr, "pgenv: cannot give %s to the postgres user\n",
                    dir);
            free(pg);
            return NULL;
        }
    }
    {
        const char *argv[] = {"initdb",   "-D",         data,        "-U",
                              "postgres", "-A",         "trust",     "-E",
                              "UTF8",     "--locale=C", "--no-sync", NULL};
        pid = spawn(pg, argv);
    }
    if (pid < 0 || waitpid(pid, &status, 0) != pid || !WIFEXITED(status) ||
        WEXITSTATUS(status) != 0) {
        print_log(pg, "initdb failed");
        free(pg);
        return NULL;
    }
    pthread_mutex_lock(&live_mu);
    for (int i = 0; i < PGENV_MAX && slot < 0; i++) {
        if (live[i] == NULL) {
            live[i] = pg;
            slot = i;
        }
    }
    pthread_mutex_unlock(&live_mu);
    if (slot < 0) {
        free(pg);
        return NULL;
    }
    /* A port taken between the look-up and the bind: try another. */
    for (int attempt = 0; attempt < 3; attempt++)
        if (server_start(pg, data) == 0)
            break;
    if (pg->pid <= 0) {
        print_log(pg, "the server did not start");
        pgenv_stop(pg);
        return NULL;
    }
    c = pgenv_connect(pg, "postgres");
    if (c) {
        PGresult *r;
        char *ident = PQescapeIdentifier(c, dbname, strlen(dbname));

        snprintf(sql, sizeof(sql), "CREATE DATABASE %s", ident ? ident : "");
        PQfreemem(ident);
        r = PQexec(c, sql);
        if (PQresultStatus(r) != PGRES_COMMAND_OK) {
            fprintf(stderr, "pgenv: %s", PQerrorMessage(c));
            PQclear(r);
            PQfinish(c);
            pgenv_stop(pg);
            return NULL;
        }
        PQclear(r);
        PQfinish(c);
        return pg;
    }
    pgenv_stop(pg);
    return NULL;
}

void pgenv_stop(pgenv *pg)
{
    if (pg == NULL)
        return;
    pthread_mutex_lock(&live_mu);
    for (int i = 0; i < PGENV_MAX; i++)
        if (live[i] == pg)
            live[i] = NULL;
    pthread_mutex_unlock(&live_mu);
    server_stop(pg);
    free(pg);
}

int pgenv_port(const pgenv *pg)
{
    return pg->port;
}

PGconn *pgenv_connect(const pgenv *pg, const char *user)
{
    char conninfo[256];
    PGconn *c;

    snprintf(conninfo, sizeof(conninfo),
             "host=127.0.0.1 port=%d dbname=%s user=%s connect_timeout=5",
             pg->port, pg->dbname, user);
    c = PQconnectdb(conninfo);
    if (PQstatus(c) == CONNECTION_OK)
        return c;
    /* Before the test database exists, the superuser goes to postgres. */
    if (strcmp(user, "postgres") == 0) {
        PQfinish(c);
        snprintf(conninfo, sizeof(conninfo),
                 "host=127.0.0.1 port=%d dbname=postgres user=postgres "
                 "connect_timeout=5",
                 pg->port);
        c = PQconnectdb(conninfo);
        if (PQstatus(c) == CONNECTION_OK)
            return c;
    }
    fprintf(stderr, "pgenv: connect as %s: %s", user, PQerrorMessage(c));
    PQfinish(c);
    return NULL;
}

int pgenv_exec(const pgenv *pg, const char *user, const char *sql)
{
    PGconn *c = pgenv_connect(pg, user);
    PGresult *r;
    int rc = 0;

    if (c == NULL)
        return -1;
    r = PQexec(c, sql);
    if (PQresultStatus(r) != PGRES_COMMAND_OK &&
        PQresultStatus(r) != PGRES_TUPLES_OK) {
        fprintf(stderr, "pgenv: %s: %s", sql, PQerrorMessage(c));
        rc = -1;
    }
    PQclear(r);
    PQfinish(c);
    return rc;
}
