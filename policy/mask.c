/*
 * mask.c — masking methods of policy.h: parameters, strength order, and
 * pol_mask_apply, which the sidecar calls once per value (no allocation).
 * The hash method is HMAC-SHA256 (RFC 2104, FIPS 180-4) written here so
 * that the keyed pads are hashed once per key rather than once per value.
 */
#include "policy/policy.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- SHA-256 (FIPS 180-4) ------------------------------------------------ */

static const uint32_t sha256_k[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1,
    0x923f82a4, 0xab1c5ed5, 0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3,
    0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174, 0xe49b69c1, 0xefbe4786,
    0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147,
    0x06ca6351, 0x14292967, 0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13,
    0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85, 0xa2bfe8a1, 0xa81a664b,
    0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a,
    0x5b9cca4f, 0x682e6ff3, 0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208,
    0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

static const uint32_t sha256_h0[8] = {
    0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
    0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19,
};

#define ROTR(x, n) (((x) >> (n)) | ((x) << (32 - (n))))

static void sha256_compress(uint32_t h[8], const unsigned char block[64])
{
    uint32_t w[64], a, b, c, d, e, f, g, hh, t1, t2;
    int i;

    for (i = 0; i < 16; i++)
        w[i] = (uint32_t)block[4 * i] << 24 | (uint32_t)block[4 * i + 1] << 16 |
               (uint32_t)block[4 * i + 2] << 8 | (uint32_t)block[4 * i + 3];
    for (i = 16; i < 64; i++) {
        uint32_t s0 =
            ROTR(w[i - 15], 7) ^ ROTR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 =
            ROTR(w[i - 2], 17) ^ ROTR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    a = h[0], b = h[1], c = h[2], d = h[3];
    e = h[4], f = h[5], g = h[6], hh = h[7];
    for (i = 0; i < 64; i++) {
        t1 = hh + (ROTR(e, 6) ^ ROTR(e, 11) ^ ROTR(e, 25)) +
             ((e & f) ^ (~e & g)) + sha256_k[i] + w[i];
        t2 = (ROTR(a, 2) ^ ROTR(a, 13) ^ ROTR(a, 22)) +
             ((a & b) ^ (a & c) ^ (b & c));
        hh = g, g = f, f = e, e = d + t1;
        d = c, c = b, b = a, a = t1 + t2;
    }
    h[0] += a, h[1] += b, h[2] += c, h[3] += d;
    h[4] += e, h[5] += f, h[6] += g, h[7] += hh;
}

/* Continue hashing from state h, `prefix` bytes already absorbed (a multiple
 * of 64), and write the digest. */
static void sha256_finish(uint32_t h[8], uint64_t prefix, const void *data,
                          size_t len, unsigned char digest[32])
{
    const unsigned char *p = data;
    unsigned char block[64];
    uint64_t bits = (prefix + len) * 8;
    size_t rest;
    int i;

    while (len >= 64) {
        sha256_compress(h, p);
        p += 64;
        len -= 64;
    }
    rest = len;
    memcpy(block, p, rest);
    block[rest++] = 0x80;
    if (rest > 56) {
        memset(block + rest, 0, 64 - rest);
        sha256_compress(h, block);
        rest = 0;
    }
    memset(block + rest, 0, 56 - rest);
    for (i = 0; i < 8; i++)
        block[56 + i] = (unsigned char)(bits >> (56 - 8 * i));
    sha256_compress(h, block);
    for (i = 0; i < 8; i++) {
        digest[4 * i] = (unsigned char)(h[i] >> 24);
        digest[4 * i + 1] = (unsigned char)(h[i] >> 16);
        digest[4 * i + 2] = (unsigned char)(h[i] >> 8);
        digest[4 * i + 3] = (unsigned char)h[i];
    }
}

void pol_mask_key_init(pol_mask_key *out, const void *key, size_t len)
{
    unsigned char k0[64] = {0}, pad[64];
    uint32_t h[8];
    int i;

    if (len > 64) {
        memcpy(h, sha256_h0, sizeof(h));
        sha256_finish(h, 0, key, len, k0);
    } else if (len > 0) {
        memcpy(k0, key, len);
    }
    for (i = 0; i < 64; i++)
        pad[i] = k0[i] ^ 0x36;
    memcpy(out->inner, sha256_h0, sizeof(out->inner));
    sha256_compress(out->inner, pad);
    for (i = 0; i < 64; i++)
        pad[i] = k0[i] ^ 0x5c;
    memcpy(out->outer, sha256_h0, sizeof(out->outer));
    sha256_compress(out->outer, pad);
}

void pol_hmac_sha256(const pol_mask_key *key, const void *data, size_t len,
                     unsigned char digest[32])
{
    uint32_t h[8];
    unsigned char inner[32];

    memcpy(h, key->inner, sizeof(h));
    sha256_finish(h, 64, data, len, inner);
    memcpy(h, key->outer, sizeof(h));
    sha256_finish(h, 64, inner, sizeof(inner), digest);
}

/* ---- names, parameters, order -------------------------------------------- */

static const char *const method_names[] = {
    [POL_MASK_NONE] = "none",           [POL_MASK_EMAIL] = "email",
    [POL_MASK_SHOW_LAST] = "show_last", [POL_MASK_SHOW_FIRST] = "show_first",
    [POL_MASK_BUCKET] = "bucket",       [POL_MASK_DATE_MONTH] = "date_month",
    [POL_MASK_DATE_YEAR] = "date_year", [POL_MASK_HASH] = "hash",
    [POL_MASK_REDACT] = "redact",       [POL_MASK_NULLIFY] = "nullify",
};

const char *pol_mask_method_name(pol_mask_method method)
{
    if ((unsigned)method < sizeof(method_names) / sizeof(method_names[0]))
        return method_names[method];
    return "?";
}

int pol_mask_method_from_name(const char *name, pol_mask_method *method)
{
    unsigned i;

    /* "none" is not a method a policy may name. */
    for (i = 1; name && i < sizeof(method_names) / sizeof(method_names[0]);
         i++) {
        if (strcmp(name, method_names[i]) == 0) {
            *method = (pol_mask_method)i;
            return 0;
        }
    }
    return POLIS_ENOTFOUND;
}

/* Bytes of the UTF-8 sequence starting with b; invalid lead bytes count as
 * one code point of one byte so that any input has a defined length. */
static size_t utf8_seq_len(unsigned char b)
{
    if (b < 0x80)
        return 1;
    if ((b & 0xe0) == 0xc0)
        return 2;
    if ((b & 0xf0) == 0xe0)
        return 3;
    if ((b & 0xf8) == 0xf0)
        return 4;
    return 1;
}

static size_t utf8_next(const char *s, size_t len, size_t i)
{
    size_t n = utf8_seq_len((unsigned char)s[i]), k;

    if (i + n > len)
        return i + 1;
    for (k = 1; k < n; k++)
        if (((unsigned char)s[i + k] & 0xc0) != 0x80)
            return i + 1;
    return i + n;
}

static size_t utf8_count(const char *s, size_t len)
{
    size_t i = 0, n = 0;

    while (i < len) {
        i = utf8_next(s, len, i);
        n++;
    }
    return n;
}

static int param_fill(const json_t *v, pol_mask *out, polis_error *err)
{
    const char *s;
    size_t len;

    if (!json_is_string(v))
        return polis_error_set(err, POLIS_EINVAL, "params.char",
                               "must be a string of one character");
    s = json_string_value(v);
    len = json_string_length(v);
    if (len == 0 || len >= sizeof(out->fill) || utf8_count(s, len) != 1 ||
        utf8_next(s, len, 0) != len)
        return polis_error_set(err, POLIS_EINVAL, "params.char",
                               "must be a string of one character");
    memcpy(out->fill, s, len);
    out->fill[len] = '\0';
    return 0;
}

int pol_mask_parse(const char *method, const json_t *params, pol_mask *out,
                   polis_error *err)
{
    const char *key;
    json_t *v;
    int rc;

    memset(out, 0, sizeof(*out));
    strcpy(out->fill, "*");
    strcpy(out->replacement, "****");
    out->n = 4;
    if (method == NULL)
        return polis_error_set(err, POLIS_EINVAL, "method", "is required");
    if (pol_mask_method_from_name(method, &out->method) != 0)
        return polis_error_set(err, POLIS_EINVAL, "method",
                               "unknown method \"%s\"", method);
    if (params != NULL && !json_is_object(params))
        return polis_error_set(err, POLIS_EINVAL, "params",
                               "must be an object");
    json_object_foreach((json_t *)params, key, v)
    {
        char where[POL_MAX_NAME + 16];

        snprintf(where, sizeof(where), "params.%s", key);
        switch (out->method) {
        case POL_MASK_REDACT:
            if (strcmp(key, "replacement") == 0) {
                if (!json_is_string(v) ||
                    json_string_length(v) > POL_MASK_TEXT_MAX)
                    return polis_error_set(
                        err, POLIS_EINVAL, where,
                        "must be a string of at most %d bytes",
                        POL_MASK_TEXT_MAX);
                if (json_object_get(params, "char"))
                    return polis_error_set(
                        err, POLIS_EINVAL, where,
                        "give either replacement or char, not both");
                snprintf(out->replacement, sizeof(out->replacement), "%s",
                         json_string_value(v));
                continue;
            }
            if (strcmp(key, "char") == 0) {
                if ((rc = param_fill(v, out, err)) != 0)
                    return rc;
                out->per_char = true;
                continue;
            }
            break;
        case POL_MASK_SHOW_FIRST:
        case POL_MASK_SHOW_LAST:
            if (strcmp(key, "n") == 0) {
                if (!json_is_integer(v) || json_integer_value(v) < 0 ||
                    json_integer_value(v) > 1024)
                    return polis_error_set(err, POLIS_EINVAL, where,
                                           "must be an integer from 0 to 1024");
                out->n = (unsigned)json_integer_value(v);
                continue;
            }
            if (strcmp(key, "char") == 0) {
                if ((rc = param_fill(v, out, err)) != 0)
                    return rc;
                continue;
            }
            break;
        case POL_MASK_BUCKET:
            if (strcmp(key, "width") == 0) {
                if (!json_is_integer(v) || json_integer_value(v) < 1 ||
                    json_integer_value(v) > 1000000000000LL)
                    return polis_error_set(
                        err, POLIS_EINVAL, where,
                        "must be an integer from 1 to 10^12");
                out->width = json_integer_value(v);
                continue;
            }
            if (strcmp(key, "format") == 0) {
                const char *f = json_string_value(v);

                if (f && strcmp(f, "range") == 0)
                    out->bucket_lower = false;
                else if (f && strcmp(f, "lower") == 0)
                    out->bucket_lower = true;
                else
                    return polis_error_set(err, POLIS_EINVAL, where,
                                           "must be \"range\" or \"lower\"");
                continue;
            }
            break;
        default:
            break;
        }
        return polis_error_set(err, POLIS_EINVAL, where,
                               "unknown parameter for method \"%s\"", method);
    }
    if (out->method == POL_MASK_BUCKET && out->width == 0)
        return polis_error_set(err, POLIS_EINVAL, "params.width",
                               "is required for method \"bucket\"");
    return 0;
}

int pol_mask_compare(const pol_mask *a, const pol_mask *b)
{
    if (a->method != b->method)
        return a->method > b->method ? 1 : -1;
    switch (a->method) {
    case POL_MASK_SHOW_FIRST:
    case POL_MASK_SHOW_LAST:
        return a->n == b->n ? 0 : (a->n < b->n ? 1 : -1);
    case POL_MASK_BUCKET:
        return a->width == b->width ? 0 : (a->width > b->width ? 1 : -1);
    case POL_MASK_REDACT:
        return a->per_char == b->per_char ? 0 : (a->per_char ? -1 : 1);
    default:
        return 0;
    }
}

/* ---- applying ------------------------------------------------------------ */

size_t pol_mask_output_max(const pol_mask *mask, size_t inlen)
{
    (void)mask;
    /* A fill is at most 4 bytes per input byte; every fixed output (hash,
     * dates, buckets, replacement, "****@") fits in the constant. */
    return 4 * inlen + POL_MASK_TEXT_MAX + 8;
}

/* Bounded writer: counts what it would need past the capacity. */
typedef struct out_buf {
    char *p;
    size_t cap, len;
} out_buf;

static void put(out_buf *o, const char *s, size_t n)
{
    if (o->len + n < o->cap)
        memcpy(o->p + o->len, s, n);
    o->len += n;
}

static int is_digits(const char *s, size_t n)
{
    size_t i;

    for (i = 0; i < n; i++)
        if (s[i] < '0' || s[i] > '9')
            return 0;
    return 1;
}

static void mask_show(const pol_mask *m, const char *in, size_t inlen,
                      out_buf *o)
{
    size_t count = utf8_count(in, inlen), fill = strlen(m->fill);
    size_t i = 0, k = 0, next;

    /* A value no longer than n would be shown whole: hide all of it. */
    size_t shown = count > m->n ? m->n : 0;
    size_t first_hidden = m->method == POL_MASK_SHOW_FIRST ? shown : 0;
    size_t last_hidden =
        m->method == POL_MASK_SHOW_FIRST ? count : count - shown;

    for (; i < inlen; i = next, k++) {
        next = utf8_next(in, inlen, i);
        if (k >= first_hidden && k < last_hidden)
            put(o, m->fill, fill);
        else
            put(o, in + i, next - i);
    }
}

static bool mask_bucket(const pol_mask *m, const char *in, size_t inlen,
                        out_buf *o)
{
    char num[64], *end, text[48];
    double v, lo;
    int n;

    if (inlen == 0 || inlen >= sizeof(num))
        return false;
    memcpy(num, in, inlen);
    num[inlen] = '\0';
    v = strtod(num, &end);
    if (*end != '\0' || end == num || !isfinite(v) || fabs(v) > 9e15)
        return false;
    lo = floor(v / (double)m->width) * (double)m->width;
    if (m->bucket_lower)
        n = snprintf(text, sizeof(text), "%lld", (long long)lo);
    else
        n = snprintf(text, sizeof(text), "%lld-%lld", (long long)lo,
                     (long long)lo + (long long)m->width - 1);
    put(o, text, (size_t)n);
    return true;
}

int pol_mask_apply(const pol_mask *mask, const pol_mask_key *key,
                   const char *in, size_t inlen, char *out, size_t cap,
                   size_t *outlen, bool *out_null)
{
    out_buf o = {out, cap, 0};
    static const char hex[] = "0123456789abcdef";
    unsigned char digest[32];
    const char *at;
    size_t i;

    *out_null = false;
    *outlen = 0;
    if (in == NULL || mask->method == POL_MASK_NULLIFY) {
        *out_null = true;
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    switch (mask->method) {
    case POL_MASK_NONE:
        put(&o, in, inlen);
        break;
    case POL_MASK_REDACT:
        if (!mask->per_char) {
            put(&o, mask->replacement, strlen(mask->replacement));
            break;
        }
        for (i = 0; i < inlen; i = utf8_next(in, inlen, i))
            put(&o, mask->fill, strlen(mask->fill));
        break;
    case POL_MASK_SHOW_FIRST:
    case POL_MASK_SHOW_LAST:
        mask_show(mask, in, inlen, &o);
        break;
    case POL_MASK_HASH:
        if (key == NULL)
            return polis_error_set(NULL, POLIS_EINVAL, NULL, NULL);
        pol_hmac_sha256(key, in, inlen, digest);
        if (cap >= 65) {
            for (i = 0; i < 32; i++) {
                out[2 * i] = hex[digest[i] >> 4];
                out[2 * i + 1] = hex[digest[i] & 15];
            }
        }
        o.len = 64;
        break;
    case POL_MASK_EMAIL:
        at = inlen ? memchr(in, '@', inlen) : NULL;
        /* The last '@' separates the domain ("a@b"@c.com is quoted). */
        while (at && memchr(at + 1, '@', inlen - (size_t)(at + 1 - in)))
            at = memchr(at + 1, '@', inlen - (size_t)(at + 1 - in));
        put(&o, "****", 4);
        if (at && at + 1 < in + inlen)
            put(&o, at, inlen - (size_t)(at - in));
        break;
    case POL_MASK_DATE_YEAR:
    case POL_MASK_DATE_MONTH:
        if (inlen < 10 || !is_digits(in, 4) || in[4] != '-' ||
            !is_digits(in + 5, 2) || in[7] != '-' || !is_digits(in + 8, 2) ||
            (in[5] - '0') * 10 + (in[6] - '0') < 1 ||
            (in[5] - '0') * 10 + (in[6] - '0') > 12 ||
            (in[8] - '0') * 10 + (in[9] - '0') < 1 ||
            (in[8] - '0') * 10 + (in[9] - '0') > 31) {
            *out_null = true;
            break;
        }
        put(&o, in, 5);
        put(&o, mask->method == POL_MASK_DATE_YEAR ? "01" : in + 5, 2);
        put(&o, "-01", 3);
        break;
    case POL_MASK_BUCKET:
        if (!mask_bucket(mask, in, inlen, &o))
            *out_null = true;
        break;
    case POL_MASK_NULLIFY:
        break;
    }
    if (*out_null) {
        if (cap > 0)
            out[0] = '\0';
        return 0;
    }
    if (o.len + 1 > cap) {
        *outlen = o.len + 1;
        return POLIS_ETOOBIG;
    }
    out[o.len] = '\0';
    *outlen = o.len;
    return 0;
}
