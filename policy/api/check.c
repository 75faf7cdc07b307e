/*
 * check.c — Check API messages ⇄ policy engine (check.h).
 */
#include "policy/api/check.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int check_subject_from_principal(const char *name, const json_t *principal,
                                 check_subject *out, polis_error *err)
{
    const json_t *spec = json_object_get(principal, "spec");
    const json_t *groups = json_object_get(spec, "groups");
    const json_t *attrs = json_object_get(spec, "attributes");
    const char *key;
    json_t *v;
    size_t i, n = 0, nvalues = 0;

    memset(&out->subject, 0, sizeof(out->subject));
    out->subject.name = name;
    out->subject.groups = out->groups;
    if (json_array_size(groups) > POL_MAX_GROUPS)
        return polis_error_set(err, POLIS_ETOOBIG, "spec.groups",
                               "principal \"%s\" has %zu groups, at most %d",
                               name, json_array_size(groups), POL_MAX_GROUPS);
    json_array_foreach(groups, i, v)
    {
        if (json_is_string(v))
            out->groups[n++] = json_string_value(v);
    }
    out->subject.ngroups = n;
    n = 0;
    if (json_object_size(attrs) > CHECK_MAX_ATTRS)
        return polis_error_set(err, POLIS_ETOOBIG, "spec.attributes",
                               "principal \"%s\" has %zu attributes, at "
                               "most %d",
                               name, json_object_size(attrs), CHECK_MAX_ATTRS);
    json_object_foreach((json_t *)attrs, key, v)
    {
        pol_expr_attr *a = &out->attrs[n];
        size_t j;
        json_t *item;

        if (json_is_string(v)) {
            *a = (pol_expr_attr){.name = key, .value = json_string_value(v)};
            n++;
            continue;
        }
        if (!json_is_array(v))
            continue; /* the resource validator allows nothing else */
        if (nvalues + json_array_size(v) > CHECK_MAX_ATTR_VALUES)
            return polis_error_set(err, POLIS_ETOOBIG, "spec.attributes",
                                   "principal \"%s\" has more than %d "
                                   "attribute values",
                                   name, CHECK_MAX_ATTR_VALUES);
        *a = (pol_expr_attr){
            .name = key, .is_list = true, .values = &out->values[nvalues]};
        json_array_foreach(v, j, item)
        {
            if (json_is_string(item))
                out->values[nvalues + a->nvalues++] = json_string_value(item);
        }
        nvalues += a->nvalues;
        n++;
    }
    out->subject.attrs = out->attrs;
    out->subject.nattrs = n;
    return 0;
}

int check_request_from_pb(const Polis__V1__CheckRequest *in,
                          const check_subject *subject, check_columns *cols,
                          pol_request *req, polis_error *err)
{
    memset(req, 0, sizeof(*req));
    if (in->product == NULL || strchr(in->product, '/') == NULL)
        return polis_error_set(err, POLIS_EINVAL, "product",
                               "expected \"domain/product\", got \"%s\"",
                               in->product ? in->product : "");
    if (pol_port_from_name(in->port && in->port[0] ? in->port : "query",
                           &req->port) != 0)
        return polis_error_set(err, POLIS_EINVAL, "port",
                               "unknown port \"%s\" (query, file, event or "
                               "http)",
                               in->port);
    if (in->n_columns > POL_MAX_COLUMNS)
        return polis_error_set(err, POLIS_ETOOBIG, "columns",
                               "%zu columns, at most %d", in->n_columns,
                               POL_MAX_COLUMNS);
    for (size_t i = 0; i < in->n_columns; i++)
        cols->cols[i] = (pol_column_request){.name = in->columns[i]};
    cols->n = in->n_columns;
    req->subject = subject->subject;
    req->product = in->product;
    req->purpose = in->purpose && in->purpose[0] ? in->purpose : NULL;
    req->columns = cols->cols;
    req->ncolumns = cols->n;
    return 0;
}

void check_rule_id(const pol_rule_info *rule, char *buf, size_t len)
{
    if (rule == NULL)
        snprintf(buf, len, "%s", "");
    else
        snprintf(buf, len, "%s/%s/%s", rule->scope, rule->policy, rule->name);
}

static const char *reason_name(pol_reason r)
{
    return r == POL_REASON_ALLOWED  ? "allowed"
           : r == POL_REASON_DENIED ? "denied"
                                    : "default-deny";
}

/*
 * A response's strings and arrays live in one block (check_response_clear
 * frees it through `masks`, its start): one allocation per check instead
 * of one per string, which the sidecar's hot path noticed.  The block is
 * sized by a first pass (`base` NULL: only count) and filled by a second
 * one over the same calls, so the two cannot disagree.
 */
typedef struct block {
    char *base; /* NULL while counting */
    size_t used;
} block;

static void *block_take(block *b, size_t size, size_t align)
{
    void *p;

    b->used = (b->used + align - 1) / align * align;
    p = b->base ? b->base + b->used : NULL;
    b->used += size;
    return p;
}

static char *block_str(block *b, const char *s)
{
    size_t n = strlen(s ? s : "") + 1;
    char *p = block_take(b, n, 1);

    if (p)
        memcpy(p, s ? s : "", n);
    return p;
}

static char *block_rule_id(block *b, const pol_rule_info *rule)
{
    size_t n;
    char *p;

    if (rule == NULL)
        return block_str(b, "");
    n = strlen(rule->scope) + strlen(rule->policy) + strlen(rule->name) + 3;
    p = block_take(b, n, 1);
    if (p)
        snprintf(p, n, "%s/%s/%s", rule->scope, rule->policy, rule->name);
    return p;
}

/* Lay out (b->base NULL) or fill every field of `out` but decision_json;
 * `n_masks` is the number of masked columns. */
static void block_fill(block *b, const pol_decision *d, int64_t revision,
                       const char *principal, bool explain, size_t n_masks,
                       Polis__V1__CheckResponse *out)
{
    size_t n_cols = pol_decision_column_count(d), k = 0;
    size_t n_filters = pol_decision_filter_count(d);
    size_t n_matched = pol_decision_matched_count(d);
    Polis__V1__ColumnMask **masks, *mask_structs;
    char **filters, **matched;

    /* Arrays first, at the block's start: `masks` is the block itself. */
    masks = block_take(b, (n_masks ? n_masks : 1) * sizeof(*masks),
                       _Alignof(max_align_t));
    mask_structs = block_take(b, n_masks * sizeof(*mask_structs),
                              _Alignof(Polis__V1__ColumnMask));
    filters = block_take(b, n_filters * sizeof(char *), _Alignof(char *));
    matched = block_take(b, n_matched * sizeof(char *), _Alignof(char *));
    out->masks = masks;
    out->n_masks = n_masks;
    out->row_filters = filters;
    out->n_row_filters = n_filters;
    out->matched_rules = matched;
    out->n_matched_rules = n_matched;
    out->allowed = pol_decision_allowed(d);
    out->min_group_size = pol_decision_min_group_size(d);
    out->revision = revision;
    out->reason = block_str(b, reason_name(pol_decision_reason(d)));
    out->deciding_rule = block_rule_id(b, pol_decision_deciding_rule(d));
    out->principal = block_str(b, principal);
    for (size_t i = 0; i < n_cols; i++) {
        const pol_mask *m = pol_decision_column_mask(d, i);
        Polis__V1__ColumnMask *cm = b->base ? &mask_structs[k] : NULL;
        char *column, *method, *rule, *tag;

        if (m == NULL)
            continue;
        column = block_str(b, pol_decision_column_name(d, i));
        method = block_str(b, pol_mask_method_name(m->method));
        rule = block_rule_id(b, pol_decision_column_mask_rule(d, i));
        tag = block_str(b, pol_decision_column_mask_tag(d, i));
        if (cm) {
            polis__v1__column_mask__init(cm);
            cm->column = column;
            cm->method = method;
            cm->rule = rule;
            cm->classification = tag;
            masks[k] = cm;
        }
        k++;
    }
    for (size_t i = 0; i < n_filters; i++) {
        const pol_rule_info *r = pol_decision_filter_rule(d, i);
        char *f = block_str(b, r && r->filter ? r->filter : "");

        if (b->base)
            filters[i] = f;
    }
    for (size_t i = 0; i < n_matched; i++) {
        char *id = block_rule_id(b, pol_decision_matched(d, i));

        if (b->base)
            matched[i] = id;
    }
    if (explain) {
        size_t need = pol_decision_explain(d, NULL, 0) + 1;
        char *text = block_take(b, need, 1);

        if (text)
            pol_decision_explain(d, text, need);
        out->explanation = text;
    }
}

int check_response_build(const pol_decision *d, int64_t revision,
                         const char *principal, bool explain,
                         Polis__V1__CheckResponse *out, polis_error *err)
{
    size_t n_cols = pol_decision_column_count(d), n_masks = 0;
    block b = {0};

    for (size_t i = 0; i < n_cols; i++)
        n_masks += pol_decision_column_mask(d, i) != NULL;
    block_fill(&b, d, revision, principal, explain, n_masks, out);
    b.base = malloc(b.used);
    if (b.base == NULL)
        goto nomem;
    b.used = 0;
    block_fill(&b, d, revision, principal, explain, n_masks, out);
    if (explain) {
        json_t *json = pol_decision_to_json(d);

        out->decision_json = json ? json_dumps(json, JSON_COMPACT) : NULL;
        json_decref(json);
        if (out->decision_json == NULL)
            goto nomem;
    }
    return 0;
nomem:
    /* The counting pass left pointers into nothing: start over clean. */
    if (b.base == NULL)
        out->masks = NULL;
    check_response_clear(out);
    return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
}

int check_response_deny(const char *reason, const char *explanation,
                        const char *principal, int64_t revision, bool explain,
                        Polis__V1__CheckResponse *out, polis_error *err)
{
    json_t *j = NULL;
    block b = {0};

    for (int pass = 0; pass < 2; pass++) {
        out->masks = block_take(&b, sizeof(*out->masks), _Alignof(max_align_t));
        out->reason = block_str(&b, reason);
        out->principal = block_str(&b, principal);
        if (explain)
            out->explanation = block_str(&b, explanation);
        if (pass == 0 && (b.base = malloc(b.used)) == NULL) {
            out->masks = NULL;
            goto nomem;
        }
        b.used = 0;
    }
    out->allowed = false;
    out->revision = revision;
    if (explain) {
        j = json_pack("{s:b, s:s, s:s}", "allowed", 0, "reason", reason,
                      "explanation", explanation);
        out->decision_json = j ? json_dumps(j, JSON_COMPACT) : NULL;
        json_decref(j);
        if (out->decision_json == NULL)
            goto nomem;
    }
    return 0;
nomem:
    check_response_clear(out);
    return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
}

int check_response_from_decision(const pol_decision *d, int64_t revision,
                                 const char *principal,
                                 Polis__V1__CheckResponse *out,
                                 polis_error *err)
{
    return check_response_build(d, revision, principal, true, out, err);
}

void check_response_clear(Polis__V1__CheckResponse *r)
{
    if (r->decision_json != NULL &&
        r->decision_json != (char *)protobuf_c_empty_string)
        free(r->decision_json);
    free(r->masks); /* the block: every other string and array */
    polis__v1__check_response__init(r);
}
