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

static char *rule_id_dup(const pol_rule_info *rule)
{
    char buf[3 * POL_MAX_NAME + 4];
    check_rule_id(rule, buf, sizeof(buf));
    return strdup(buf);
}

static const char *reason_name(pol_reason r)
{
    return r == POL_REASON_ALLOWED  ? "allowed"
           : r == POL_REASON_DENIED ? "denied"
                                    : "default-deny";
}

int check_response_from_decision(const pol_decision *d, int64_t revision,
                                 const char *principal,
                                 Polis__V1__CheckResponse *out,
                                 polis_error *err)
{
    size_t n_cols = pol_decision_column_count(d), n_masks = 0;
    size_t n_filters = pol_decision_filter_count(d);
    size_t n_matched = pol_decision_matched_count(d);
    size_t need = pol_decision_explain(d, NULL, 0) + 1;
    json_t *json = pol_decision_to_json(d);
    bool ok = true;

    out->allowed = pol_decision_allowed(d);
    out->reason = strdup(reason_name(pol_decision_reason(d)));
    out->deciding_rule = rule_id_dup(pol_decision_deciding_rule(d));
    out->min_group_size = pol_decision_min_group_size(d);
    out->revision = revision;
    out->principal = strdup(principal ? principal : "");
    out->explanation = malloc(need);
    if (out->explanation)
        pol_decision_explain(d, out->explanation, need);
    out->decision_json = json ? json_dumps(json, JSON_COMPACT) : NULL;
    json_decref(json);
    ok = out->reason && out->deciding_rule && out->principal &&
         out->explanation && out->decision_json;

    out->masks = calloc(n_cols ? n_cols : 1, sizeof(*out->masks));
    out->row_filters = calloc(n_filters ? n_filters : 1, sizeof(char *));
    out->matched_rules = calloc(n_matched ? n_matched : 1, sizeof(char *));
    ok = ok && out->masks && out->row_filters && out->matched_rules;
    for (size_t i = 0; ok && i < n_cols; i++) {
        const pol_mask *m = pol_decision_column_mask(d, i);
        const char *tag = pol_decision_column_mask_tag(d, i);
        Polis__V1__ColumnMask *cm;

        if (m == NULL)
            continue;
        cm = calloc(1, sizeof(*cm));
        if (cm == NULL) {
            ok = false;
            break;
        }
        polis__v1__column_mask__init(cm);
        out->masks[n_masks++] = cm;
        cm->column = strdup(pol_decision_column_name(d, i));
        cm->method = strdup(pol_mask_method_name(m->method));
        cm->rule = rule_id_dup(pol_decision_column_mask_rule(d, i));
        cm->classification = strdup(tag ? tag : "");
        ok = cm->column && cm->method && cm->rule && cm->classification;
    }
    out->n_masks = n_masks;
    for (size_t i = 0; ok && i < n_filters; i++) {
        const pol_rule_info *r = pol_decision_filter_rule(d, i);
        out->row_filters[i] = strdup(r && r->filter ? r->filter : "");
        ok = out->row_filters[i] != NULL;
        out->n_row_filters = i + 1;
    }
    for (size_t i = 0; ok && i < n_matched; i++) {
        out->matched_rules[i] = rule_id_dup(pol_decision_matched(d, i));
        ok = out->matched_rules[i] != NULL;
        out->n_matched_rules = i + 1;
    }
    if (!ok) {
        check_response_clear(out);
        return polis_error_set(err, POLIS_ENOMEM, NULL, NULL);
    }
    return 0;
}

void check_response_clear(Polis__V1__CheckResponse *r)
{
    /* Fields left at the protobuf-c defaults point at static "" strings. */
#define FREE_STR(s)                                                            \
    do {                                                                       \
        if ((s) != NULL && (s) != (char *)protobuf_c_empty_string)             \
            free(s);                                                           \
        (s) = NULL;                                                            \
    } while (0)
    FREE_STR(r->reason);
    FREE_STR(r->deciding_rule);
    FREE_STR(r->explanation);
    FREE_STR(r->decision_json);
    FREE_STR(r->principal);
    for (size_t i = 0; r->masks && i < r->n_masks; i++) {
        FREE_STR(r->masks[i]->column);
        FREE_STR(r->masks[i]->method);
        FREE_STR(r->masks[i]->rule);
        FREE_STR(r->masks[i]->classification);
        free(r->masks[i]);
    }
    free(r->masks);
    for (size_t i = 0; r->row_filters && i < r->n_row_filters; i++)
        free(r->row_filters[i]);
    free(r->row_filters);
    for (size_t i = 0; r->matched_rules && i < r->n_matched_rules; i++)
        free(r->matched_rules[i]);
    free(r->matched_rules);
    r->masks = NULL;
    r->row_filters = r->matched_rules = NULL;
    r->n_masks = r->n_row_filters = r->n_matched_rules = 0;
#undef FREE_STR
}
