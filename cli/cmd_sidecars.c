/*
 * cmd_sidecars.c — `polisctl sidecars`: the sidecars the control plane knows
 * (Governance.Sidecars, proto/polis/v1/governance.proto), with how far each
 * one's applied snapshot is from the newest, as a table, JSON or YAML.
 */
#include "cli/cli.h"
#include "cli/output.h"
#include "polis/v1/governance.pb-c.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

/* Table mode keeps one sidecar on one line; -o json/yaml has the whole
 * error. */
#define ERROR_SHOWN_MAX 60

/* Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's
 * days_from_civil): timegm() is not in C11 and mktime() would apply the
 * local time zone. */
static int64_t days_from_civil(int64_t y, int m, int d)
{
    int64_t era, yoe, doy, doe;

    y -= m <= 2;
    era = (y >= 0 ? y : y - 399) / 400;
    yoe = y - era * 400;
    doy = (153 * (m + (m > 2 ? -3 : 9)) + 2) / 5 + d - 1;
    doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    return era * 146097 + doe - 719468;
}

/* "2026-11-24T14:48:42.492Z" (or with +hh:mm) → seconds since the epoch.
 * -1 when it is not RFC 3339. */
static int rfc3339_parse(const char *s, double *out)
{
    int y, mo, d, h, mi, sec, n = 0;
    double frac = 0, offset = 0;
    const char *p;

    if (s == NULL ||
        sscanf(s, "%4d-%2d-%2d%*1[Tt ]%2d:%2d:%2d%n", &y, &mo, &d, &h, &mi,
               &sec, &n) != 6 ||
        n == 0 || mo < 1 || mo > 12 || d < 1 || d > 31 || h > 23 || mi > 59 ||
        sec > 60)
        return -1;
    p = s + n;
    if (*p == '.') {
        double scale = 0.1;
        for (p++; *p >= '0' && *p <= '9'; p++, scale /= 10)
            frac += (*p - '0') * scale;
    }
    if (*p == '+' || *p == '-') {
        int oh, om;
        if (sscanf(p + 1, "%2d:%2d", &oh, &om) != 2)
            return -1;
        offset = (*p == '+' ? 1 : -1) * (oh * 3600.0 + om * 60.0);
    } else if (*p != 'Z' && *p != 'z') {
        return -1;
    }
    *out = (double)days_from_civil(y, mo, d) * 86400.0 + h * 3600.0 +
           mi * 60.0 + sec + frac - offset;
    return 0;
}

/* "3s", "5m", "2h", "4d": the largest whole unit, as kubectl shows ages. */
static void age_format(const char *last_seen, double now, char *buf, size_t len)
{
    double t, age;

    if (rfc3339_parse(last_seen, &t) != 0) {
        snprintf(buf, len, "-");
        return;
    }
    age = now - t;
    if (age < 0)
        age = 0; /* clocks a little apart */
    if (age < 60)
        snprintf(buf, len, "%ds", (int)age);
    else if (age < 3600)
        snprintf(buf, len, "%dm", (int)(age / 60));
    else if (age < 86400)
        snprintf(buf, len, "%dh", (int)(age / 3600));
    else
        snprintf(buf, len, "%lldd", (long long)(age / 86400));
}

/* One line of at most ERROR_SHOWN_MAX bytes, "..." when cut (never inside
 * a UTF-8 sequence).  buf holds at least ERROR_SHOWN_MAX + 1 bytes. */
static void error_short(const char *error, char *buf)
{
    size_t n = strlen(error);
    bool cut = n > ERROR_SHOWN_MAX;

    if (n == 0) {
        strcpy(buf, "-");
        return;
    }
    if (cut) {
        n = ERROR_SHOWN_MAX - 3;
        while (n > 0 && ((unsigned char)error[n] & 0xC0) == 0x80)
            n--;
    }
    for (size_t i = 0; i < n; i++)
        buf[i] = iscntrl((unsigned char)error[i]) ? ' ' : error[i];
    strcpy(buf + n, cut ? "..." : "");
}

static void revision_cell(int64_t rev, char *buf, size_t len)
{
    if (rev > 0)
        snprintf(buf, len, "%" PRId64, rev);
    else
        snprintf(buf, len, "-"); /* none applied or built yet */
}

static json_t *sidecar_json(const Polis__V1__SidecarStatus *s)
{
    return json_pack(
        "{s:s,s:s,s:s,s:s,s:I,s:I,s:s,s:s,s:s,s:s,s:s}", "id", s->id, "domain",
        s->domain, "state", s->state, "address", s->address, "appliedRevision",
        (json_int_t)s->applied_revision, "latestRevision",
        (json_int_t)s->latest_revision, "controlPlane", s->controlplane,
        "lastError", s->last_error, "lastSeen", s->last_seen, "connectedSince",
        s->connected_since, "version", s->version);
}

static int print_sidecars(cli_ctx *ctx, const Polis__V1__SidecarsResponse *r)
{
    static const char *const cols[] = {
        "ID",     "DOMAIN", "STATE",         "APPLIED",
        "LATEST", "AGE",    "CONTROL PLANE", "ERROR"};
    struct timespec ts;
    out_table *t;
    json_t *arr;
    int rc = 0;

    if (ctx->output != CLI_OUTPUT_TABLE) {
        if ((arr = json_array()) == NULL)
            return cli_fail(ctx, "out of memory");
        for (size_t i = 0; i < r->n_sidecars; i++)
            if (json_array_append_new(arr, sidecar_json(r->sidecars[i])) != 0) {
                json_decref(arr);
                return cli_fail(ctx, "out of memory");
            }
        rc = out_print_value(ctx, arr);
        json_decref(arr);
        return rc;
    }
    if (r->n_sidecars == 0) {
        fprintf(ctx->err, "No sidecars found.\n");
        return 0;
    }
    if ((t = out_table_new(cols, sizeof(cols) / sizeof(*cols))) == NULL)
        return cli_fail(ctx, "out of memory");
    clock_gettime(CLOCK_REALTIME, &ts);
    for (size_t i = 0; i < r->n_sidecars && rc == 0; i++) {
        const Polis__V1__SidecarStatus *s = r->sidecars[i];
        char applied[24], latest[24], age[24], error[ERROR_SHOWN_MAX + 8];
        const char *row[8];

        revision_cell(s->applied_revision, applied, sizeof(applied));
        revision_cell(s->latest_revision, latest, sizeof(latest));
        age_format(s->last_seen, (double)ts.tv_sec + ts.tv_nsec / 1e9, age,
                   sizeof(age));
        error_short(s->last_error, error);
        row[0] = s->id;
        row[1] = s->domain;
        row[2] = s->state;
        row[3] = applied;
        row[4] = latest;
        row[5] = age;
        row[6] = s->controlplane[0] ? s->controlplane : "-";
        row[7] = error;
        rc = out_table_add(t, row);
    }
    if (rc == 0)
        out_table_print(t, ctx->out);
    else
        rc = cli_fail(ctx, "out of memory");
    out_table_free(t);
    return rc;
}

int cmd_sidecars(cli_ctx *ctx, const cli_args *args)
{
    Polis__V1__SidecarsRequest req = POLIS__V1__SIDECARS_REQUEST__INIT;
    Polis__V1__SidecarsResponse *resp = NULL;
    const char *domain = cli_args_value(args, "domain");
    int rc;

    if (domain && domain[0] == '\0')
        return cli_usage_error(ctx, "--domain: empty name");
    req.domain = (char *)(domain ? domain : "");
    rc = cli_call(ctx, "Sidecars", &req.base, (ProtobufCMessage **)&resp, NULL);
    if (rc)
        return rc;
    rc = print_sidecars(ctx, resp);
    protobuf_c_message_free_unpacked(&resp->base, NULL);
    return rc;
}
