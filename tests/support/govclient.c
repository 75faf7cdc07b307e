/*
 * govclient.c — Governance Apply over gRPC and HTTP calls with libcurl for
 * tests (govclient.h).
 */
#include "tests/support/govclient.h"
#include "polis/v1/governance.pb-c.h"

#include <curl/curl.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_BODY (16u * 1024 * 1024)

int64_t gc_apply_docs(rpc_channel *gov, const char *const *docs, size_t n,
                      int timeout_ms)
{
    Polis__V1__ApplyRequest req = POLIS__V1__APPLY_REQUEST__INIT;
    Polis__V1__Document *d = calloc(n ? n : 1, sizeof(*d));
    Polis__V1__Document **dp = calloc(n ? n : 1, sizeof(*dp));
    ProtobufCMessage *resp = NULL;
    rpc_status st = {0};
    int64_t rev = -1;

    if (d == NULL || dp == NULL) {
        fprintf(stderr, "\napply: out of memory\n");
        goto out;
    }
    for (size_t i = 0; i < n; i++) {
        polis__v1__document__init(&d[i]);
        d[i].source = "test";
        d[i].json = (char *)docs[i];
        dp[i] = &d[i];
    }
    req.documents = dp;
    req.n_documents = n;
    if (rpc_unary(gov, &polis__v1__governance__descriptor, "Apply", &req.base,
                  &resp, NULL, 0, timeout_ms > 0 ? timeout_ms : 10000,
                  &st) != RPC_OK) {
        fprintf(stderr, "\napply failed: %s: %s\n", rpc_status_name(st.code),
                st.message);
        goto out;
    }
    rev = ((Polis__V1__ApplyResponse *)resp)->revision;
    protobuf_c_message_free_unpacked(resp, NULL);
out:
    free(d);
    free(dp);
    return rev;
}

int64_t gc_apply(rpc_channel *gov, const char *doc)
{
    return gc_apply_docs(gov, &doc, 1, 0);
}

void gc_token_sha256(const char *token, char hex[65])
{
    unsigned char md[SHA256_DIGEST_LENGTH];

    SHA256((const unsigned char *)token, strlen(token), md);
    for (int i = 0; i < SHA256_DIGEST_LENGTH; i++)
        snprintf(hex + 2 * i, 3, "%02x", md[i]);
}

int64_t gc_apply_principal(rpc_channel *gov, const char *name,
                           const char *group, const char *region,
                           const char *token)
{
    char hex[65], doc[1024], attrs[128] = "";

    gc_token_sha256(token, hex);
    if (region)
        snprintf(attrs, sizeof(attrs), ",\"attributes\":{\"region\":\"%s\"}",
                 region);
    snprintf(doc, sizeof(doc),
             "{\"apiVersion\":\"polis/v1\",\"kind\":\"Principal\",\"metadata\":"
             "{\"name\":\"%s\"},\"spec\":{\"groups\":[\"%s\"]%s,"
             "\"credentials\":{\"tokenSha256\":[\"%s\"]}}}",
             name, group, attrs, hex);
    return gc_apply(gov, doc);
}

static size_t on_data(char *p, size_t size, size_t n, void *ud)
{
    gc_response *r = ud;
    size_t len = size * n;
    char *b;

    if (r->len + len > MAX_BODY)
        return 0;
    if ((b = realloc(r->body, r->len + len + 1)) == NULL)
        return 0;
    memcpy(b + r->len, p, len);
    r->body = b;
    r->len += len;
    r->body[r->len] = '\0';
    return len;
}

long gc_http(const char *method, const char *url, const char *token,
             const char *body, const char *const *headers, int timeout_ms,
             gc_response *r)
{
    CURL *h = curl_easy_init();
    struct curl_slist *hdr = NULL;
    char line[1024];

    memset(r, 0, sizeof(*r));
    r->status = -1;
    if (h == NULL)
        return -1;
    curl_easy_setopt(h, CURLOPT_URL, url);
    curl_easy_setopt(h, CURLOPT_PATH_AS_IS, 1L);
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_TIMEOUT_MS,
                     (long)(timeout_ms > 0 ? timeout_ms : 30000));
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_data);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, r);
    if (token) {
        snprintf(line, sizeof(line), "Authorization: Bearer %s", token);
        hdr = curl_slist_append(hdr, line);
    }
    for (size_t i = 0; headers && headers[i]; i++)
        hdr = curl_slist_append(hdr, headers[i]);
    if (body) {
        hdr = curl_slist_append(hdr, "Content-Type: application/json");
        curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
    }
    if (method)
        curl_easy_setopt(h, CURLOPT_CUSTOMREQUEST, method);
    curl_easy_setopt(h, CURLOPT_HTTPHEADER, hdr);
    if (curl_easy_perform(h) == CURLE_OK)
        curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &r->status);
    curl_slist_free_all(hdr);
    curl_easy_cleanup(h);
    return r->status;
}

json_t *gc_response_json(const gc_response *r)
{
    return r->body ? json_loadb(r->body, r->len, 0, NULL) : NULL;
}

void gc_response_free(gc_response *r)
{
    if (r == NULL)
        return;
    free(r->body);
    r->body = NULL;
    r->len = 0;
}
