/*
 * principals.c — name and token indexes over a snapshot's Principal
 * documents (principals.h).  Two open-addressing tables sized to a power
 * of two at least twice the entries, so a probe sequence stays short and
 * a lookup never allocates.
 */
#include "sidecar/principals.h"

#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/sha.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct name_slot {
    const char *name; /* NULL: empty */
    const json_t *doc;
} name_slot;

typedef struct token_slot {
    unsigned char digest[SHA256_DIGEST_LENGTH];
    const char *name; /* NULL: empty */
    const json_t *doc;
} token_slot;

struct sc_principals {
    name_slot *names;
    size_t names_mask, nnames;
    token_slot *tokens;
    size_t tokens_mask, ntokens;
};

static uint64_t fnv1a(const char *s)
{
    uint64_t h = 1469598103934665603ull;

    for (; *s; s++)
        h = (h ^ (unsigned char)*s) * 1099511628211ull;
    return h;
}

/* The digest is uniformly distributed already: its first bytes are the
 * slot. */
static uint64_t digest_hash(const unsigned char *d)
{
    uint64_t h;

    memcpy(&h, d, sizeof(h));
    return h;
}

static size_t table_size(size_t n)
{
    size_t size = 16;

    while (size < 2 * n)
        size *= 2;
    return size;
}

static int hexval(char c)
{
    if (c >= '0' && c <= '9')
        return c - '0';
    if (c >= 'a' && c <= 'f')
        return c - 'a' + 10;
    return -1;
}

static int parse_digest(const char *hex, unsigned char out[32])
{
    if (hex == NULL || strlen(hex) != 64)
        return -1;
    for (size_t i = 0; i < 32; i++) {
        int hi = hexval(hex[2 * i]), lo = hexval(hex[2 * i + 1]);

        if (hi < 0 || lo < 0)
            return -1;
        out[i] = (unsigned char)(hi << 4 | lo);
    }
    return 0;
}

static const char *kind_of(const json_t *doc)
{
    return json_string_value(json_object_get(doc, "kind"));
}

static const char *name_of(const json_t *doc)
{
    return json_string_value(
        json_object_get(json_object_get(doc, "metadata"), "name"));
}

static const json_t *tokens_of(const json_t *doc)
{
    return json_object_get(
        json_object_get(json_object_get(doc, "spec"), "credentials"),
        "tokenSha256");
}

static int add_name(sc_principals *p, const char *name, const json_t *doc,
                    polis_error *err)
{
    size_t i = fnv1a(name) & p->names_mask;

    for (; p->names[i].name; i = (i + 1) & p->names_mask)
        if (strcmp(p->names[i].name, name) == 0)
            return polis_error_set(err, POLIS_ECONFLICT, "principals",
                                   "two principals named \"%s\"", name);
    p->names[i] = (name_slot){name, doc};
    p->nnames++;
    return 0;
}

static int add_token(sc_principals *p, const unsigned char digest[32],
                     const char *name, const json_t *doc, polis_error *err)
{
    size_t i = digest_hash(digest) & p->tokens_mask;

    for (; p->tokens[i].name; i = (i + 1) & p->tokens_mask) {
        if (memcmp(p->tokens[i].digest, digest, 32) != 0)
            continue;
        if (strcmp(p->tokens[i].name, name) == 0)
            return 0; /* listed twice by one principal: harmless */
        return polis_error_set(err, POLIS_ECONFLICT, "principals",
                               "principals \"%s\" and \"%s\" list the same "
                               "token digest: a token must name one "
                               "principal",
                               p->tokens[i].name, name);
    }
    memcpy(p->tokens[i].digest, digest, 32);
    p->tokens[i].name = name;
    p->tokens[i].doc = doc;
    p->ntokens++;
    return 0;
}

static int index_principal(sc_principals *p, const json_t *doc, size_t pos,
                           polis_error *err)
{
    const char *name = name_of(doc);
    const json_t *tokens = tokens_of(doc), *t;
    unsigned char digest[32];
    char where[POLIS_ERROR_WHERE_MAX];
    size_t i;
    int rc;

    if (name == NULL || name[0] == '\0')
        return polis_error_set(err, POLIS_EINVAL, "principals",
                               "documents[%zu]: a Principal without "
                               "metadata.name",
                               pos);
    if ((rc = add_name(p, name, doc, err)) != 0)
        return rc;
    if (tokens != NULL && !json_is_array(tokens))
        return polis_error_set(err, POLIS_EINVAL, NULL,
                               "principal \"%s\": spec.credentials."
                               "tokenSha256: expected a list",
                               name);
    json_array_foreach(tokens, i, t)
    {
        if (parse_digest(json_string_value(t), digest) != 0) {
            snprintf(where, sizeof(where),
                     "principal \"%s\": spec.credentials.tokenSha256[%zu]",
                     name, i);
            return polis_error_set(err, POLIS_EINVAL, where,
                                   "expected 64 lower-case hex digits "
                                   "(SHA-256 of the token)");
        }
        if ((rc = add_token(p, digest, name, doc, err)) != 0)
            return rc;
    }
    return 0;
}

int sc_principals_build(const json_t *docs, sc_principals **out,
                        polis_error *err)
{
    sc_principals *p;
    const json_t *doc;
    size_t i, nprin = 0, ntok = 0;
    int rc = 0;

    *out = NULL;
    json_array_foreach(docs, i, doc)
    {
        const char *kind = kind_of(doc);

        if (kind && strcmp(kind, "Principal") == 0) {
            nprin++;
            ntok += json_array_size(tokens_of(doc));
        }
    }
    if (nprin > SC_MAX_PRINCIPALS || ntok > SC_MAX_TOKENS)
        return polis_error_set(err, POLIS_ETOOBIG, "principals",
                               "%zu principals with %zu tokens; at most %d "
                               "and %d",
                               nprin, ntok, SC_MAX_PRINCIPALS, SC_MAX_TOKENS);
    p = calloc(1, sizeof(*p));
    if (p == NULL)
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    p->names_mask = table_size(nprin) - 1;
    p->tokens_mask = table_size(ntok) - 1;
    p->names = calloc(p->names_mask + 1, sizeof(*p->names));
    p->tokens = calloc(p->tokens_mask + 1, sizeof(*p->tokens));
    if (p->names == NULL || p->tokens == NULL) {
        sc_principals_free(p);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    json_array_foreach(docs, i, doc)
    {
        const char *kind = kind_of(doc);

        if (kind && strcmp(kind, "Principal") == 0 &&
            (rc = index_principal(p, doc, i, err)) != 0)
            break;
    }
    if (rc) {
        sc_principals_free(p);
        return rc;
    }
    *out = p;
    return 0;
}

void sc_principals_free(sc_principals *p)
{
    if (p == NULL)
        return;
    free(p->names);
    free(p->tokens);
    free(p);
}

const json_t *sc_principals_by_name(const sc_principals *p, const char *name)
{
    size_t i;

    if (p == NULL || name == NULL)
        return NULL;
    for (i = fnv1a(name) & p->names_mask; p->names[i].name;
         i = (i + 1) & p->names_mask)
        if (strcmp(p->names[i].name, name) == 0)
            return p->names[i].doc;
    return NULL;
}

/* SHA256() looks the algorithm up on every call (OpenSSL 3's EVP_Q_digest):
 * a cost on every authenticated request.  It is fetched once. */
static EVP_MD *sha256_md;
static pthread_once_t sha256_once = PTHREAD_ONCE_INIT;

static void sha256_fetch(void)
{
    sha256_md = EVP_MD_fetch(NULL, "SHA256", NULL);
}

static void token_digest(const char *token, size_t len,
                         unsigned char out[SHA256_DIGEST_LENGTH])
{
    pthread_once(&sha256_once, sha256_fetch);
    if (sha256_md == NULL ||
        EVP_Digest(token, len, out, NULL, sha256_md, NULL) != 1)
        SHA256((const unsigned char *)token, len, out);
}

const char *sc_principals_by_token(const sc_principals *p, const char *token,
                                   size_t len, const json_t **doc)
{
    unsigned char digest[SHA256_DIGEST_LENGTH];
    size_t i;

    if (doc)
        *doc = NULL;
    if (p == NULL || token == NULL || len == 0)
        return NULL;
    token_digest(token, len, digest);
    for (i = digest_hash(digest) & p->tokens_mask; p->tokens[i].name;
         i = (i + 1) & p->tokens_mask) {
        if (CRYPTO_memcmp(p->tokens[i].digest, digest, sizeof(digest)) == 0) {
            if (doc)
                *doc = p->tokens[i].doc;
            return p->tokens[i].name;
        }
    }
    return NULL;
}

size_t sc_principals_count(const sc_principals *p)
{
    return p ? p->nnames : 0;
}

size_t sc_principals_token_count(const sc_principals *p)
{
    return p ? p->ntokens : 0;
}
