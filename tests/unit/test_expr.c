/*
 * test_expr.c — the expression language (policy/expr.h): parsing, canonical
 * text, precedence, every operator, three-valued logic, type and parse
 * errors with their positions, limits, subject/request values.
 */
#include "policy/expr.h"
#include "tests/support/testutil.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- fixture: one row, one subject, one request -------------------------- */

static const pol_expr_column schema_cols[] = {
    {"region", POL_EXPR_STRING},    {"price", POL_EXPR_DECIMAL},
    {"qty", POL_EXPR_INTEGER},      {"active", POL_EXPR_BOOLEAN},
    {"weird col", POL_EXPR_STRING}, {"note", POL_EXPR_STRING},
    {"email", POL_EXPR_STRING},
};
static const pol_expr_schema schema = {
    schema_cols, sizeof(schema_cols) / sizeof(schema_cols[0]), NULL, NULL};

/* Row values by column id (index in schema_cols). */
static pol_expr_value row[7];
static int row_reads;

static void set_row(void)
{
    memset(row, 0, sizeof(row));
    row[0].type = POL_EXPR_STRING;
    row[0].u.str = "EU";
    row[0].len = 2;
    row[1].type = POL_EXPR_DECIMAL;
    row[1].u.d = 9.5;
    row[2].type = POL_EXPR_INTEGER;
    row[2].u.i = 3;
    row[3].type = POL_EXPR_BOOLEAN;
    row[3].u.b = true;
    row[4].type = POL_EXPR_STRING;
    row[4].u.str = "it's";
    row[4].len = 4;
    row[5].type = POL_EXPR_NULL; /* note is null */
    row[6].type = POL_EXPR_STRING;
    row[6].u.str = "Ann.Lee@Example.com";
    row[6].len = strlen(row[6].u.str);
}

static int get_col(void *ctx, int id, const char *name, pol_expr_value *out)
{
    pol_expr_value *r = ctx;
    (void)name;
    row_reads++;
    if (id < 0 || id >= 7)
        return POLIS_ENOTFOUND;
    *out = r[id];
    return 0;
}

static const char *const groups[] = {"analysts", "eu-staff"};
static const char *const clearances[] = {"secret", "pii"};
static const pol_expr_attr attrs[] = {
    {"region", false, "EU", NULL, 0},
    {"clearance", true, NULL, clearances, 2},
    {"team", false, NULL, NULL, 0}, /* present but null */
};
static const pol_expr_subject subject = {"ann", groups, 2, attrs, 3};
static const pol_expr_request request = {"analytics", "orders", "query"};

static pol_tri eval_src(const char *src)
{
    polis_error err = {0};
    pol_expr *e = NULL;
    pol_tri t = POL_UNKNOWN;
    char buf[1024];
    int rc;

    set_row();
    rc = pol_expr_compile(src, &schema, &e, &err);
    if (rc) {
        fprintf(stderr, "compile \"%s\": %s\n", src,
                polis_error_format(&err, buf, sizeof(buf)));
        CU_FAIL("compile failed");
        return (pol_tri)99;
    }
    rc = pol_expr_eval(e, get_col, row, &subject, &request, &t, &err);
    CU_ASSERT_EQUAL(rc, 0);
    pol_expr_free(e);
    return t;
}

#define ASSERT_EVAL(src, expected)                                             \
    do {                                                                       \
        pol_tri got_ = eval_src(src);                                          \
        if (got_ != (expected))                                                \
            fprintf(stderr, "\n%s: got %d, want %d\n", src, (int)got_,         \
                    (int)(expected));                                          \
        CU_ASSERT_EQUAL(got_, expected);                                       \
    } while (0)

/* Compile src and expect an error: code, "col N" and a message fragment. */
static void expect_error(const char *src, int code, const char *where,
                         const char *fragment)
{
    polis_error err = {0};
    pol_expr *e = NULL;
    int rc = pol_expr_compile(src, &schema, &e, &err);

    CU_ASSERT_PTR_NULL(e);
    CU_ASSERT_EQUAL(rc, code);
    CU_ASSERT_EQUAL(err.code, code);
    if (strcmp(err.where, where) != 0 || !strstr(err.message, fragment)) {
        fprintf(stderr, "\n\"%s\": got \"%s: %s\", want \"%s\" ~ \"%s\"\n", src,
                err.where, err.message, where, fragment);
        CU_FAIL("wrong error");
    }
    pol_expr_free(e);
}

static char *canonical(const char *src)
{
    polis_error err = {0};
    pol_expr *e = NULL;
    char *s = NULL;

    if (pol_expr_parse(src, &e, &err) != 0) {
        fprintf(stderr, "\nparse \"%s\": %s %s\n", src, err.where, err.message);
        CU_FAIL("parse failed");
        return NULL;
    }
    CU_ASSERT_EQUAL(pol_expr_to_string(e, &s, &err), 0);
    pol_expr_free(e);
    return s;
}

/* ---- cases --------------------------------------------------------------- */

static void test_round_trip(void)
{
    static const char *const pairs[][2] = {
        {"region=='EU'", "region == 'EU'"},
        {"REGION == 'EU' AND Qty>=1", "REGION == 'EU' and Qty >= 1"},
        {"\"weird col\" != 'it''s'", "\"weird col\" != 'it''s'"},
        {"a or b and c", "a or (b and c)"},
        {"(a or b) and c", "(a or b) and c"},
        {"a and (b and c)", "a and (b and c)"},
        {"not not a", "not not a"},
        {"not (a and b)", "not (a and b)"},
        {"not x == 1", "not x == 1"},
        {"x in ('EU','US', null)", "x in ('EU', 'US', null)"},
        {"x not in (1, 2.5, -3)", "x not in (1, 2.5, -3)"},
        {"'admins' in subject.groups", "'admins' in subject.groups"},
        {"x not like 'a\\%_'", "x not like 'a\\%_'"},
        {"x is not null or y is null", "x is not null or y is null"},
        {"subject.region == request.purpose",
         "subject.region == request.purpose"},
        {"subject.\"name\" == subject.name",
         "subject.\"name\" == subject.name"},
        {"subject.\"odd key\" == 'x'", "subject.\"odd key\" == 'x'"},
        {"\"and\" == \"subject\"", "\"and\" == \"subject\""},
        {"(a == b) == true", "(a == b) == true"},
        {"d == 1e3 or d < 0.1 or d > -0.0",
         "d == 1000.0 or d < 0.1 or d > -0.0"},
        {"i == -9223372036854775808", "i == -9223372036854775808"},
        {"((((a))))", "a"},
        {"x == '' and y == 'ü'", "x == '' and y == 'ü'"},
    };

    for (size_t i = 0; i < sizeof(pairs) / sizeof(pairs[0]); i++) {
        char *s = canonical(pairs[i][0]);
        char *again;
        if (s == NULL)
            continue;
        if (strcmp(s, pairs[i][1]) != 0)
            fprintf(stderr, "\n\"%s\" printed as \"%s\", want \"%s\"\n",
                    pairs[i][0], s, pairs[i][1]);
        CU_ASSERT_STRING_EQUAL(s, pairs[i][1]);
        again = canonical(s); /* the canonical text is a fixed point */
        if (again)
            CU_ASSERT_STRING_EQUAL(again, s);
        free(again);
        free(s);
    }
}

static void test_precedence(void)
{
    /* and binds tighter than or */
    ASSERT_EVAL("true or false and false", POL_TRUE);
    ASSERT_EVAL("(true or false) and false", POL_FALSE);
    /* not binds tighter than and/or */
    ASSERT_EVAL("not true or true", POL_TRUE);
    ASSERT_EVAL("not (true or true)", POL_FALSE);
    ASSERT_EVAL("not false and false", POL_FALSE);
    /* not applies to the whole comparison (SQL: NOT a = b) */
    ASSERT_EVAL("not region == 'US'", POL_TRUE);
    ASSERT_EVAL("not qty > 2 or qty == 3", POL_TRUE);
    ASSERT_EVAL("not qty > 2 and qty == 3", POL_FALSE);
    /* comparison binds tighter than and */
    ASSERT_EVAL("qty == 3 and region == 'EU'", POL_TRUE);
    ASSERT_EVAL("active == true and not active == false", POL_TRUE);
}

static void test_comparison_operators(void)
{
    ASSERT_EVAL("region == 'EU'", POL_TRUE);
    ASSERT_EVAL("region == 'eu'", POL_FALSE); /* case-sensitive */
    ASSERT_EVAL("region != 'US'", POL_TRUE);
    ASSERT_EVAL("region < 'EV'", POL_TRUE);
    ASSERT_EVAL("region < 'EU'", POL_FALSE);
    ASSERT_EVAL("region <= 'EU'", POL_TRUE);
    ASSERT_EVAL("region > 'E'", POL_TRUE); /* longer sorts after prefix */
    ASSERT_EVAL("region >= 'EUR'", POL_FALSE);
    ASSERT_EVAL("'B' < 'a'", POL_TRUE); /* byte order, not locale */
    ASSERT_EVAL("qty == 3", POL_TRUE);
    ASSERT_EVAL("qty == 3.0", POL_TRUE);
    ASSERT_EVAL("qty < 3.5", POL_TRUE);
    ASSERT_EVAL("qty > 2.999", POL_TRUE);
    ASSERT_EVAL("price > 9", POL_TRUE);
    ASSERT_EVAL("price <= 9.5", POL_TRUE);
    ASSERT_EVAL("price != 9.5", POL_FALSE);
    ASSERT_EVAL("price >= 10", POL_FALSE);
    ASSERT_EVAL("9007199254740993 > 9007199254740992.0", POL_TRUE);
    ASSERT_EVAL("active == true", POL_TRUE);
    ASSERT_EVAL("active != true", POL_FALSE);
    ASSERT_EVAL("active", POL_TRUE);
    ASSERT_EVAL("not active", POL_FALSE);
    ASSERT_EVAL("\"weird col\" == 'it''s'", POL_TRUE);
    ASSERT_EVAL("(qty == 3) == (region == 'EU')", POL_TRUE);
}

static void test_in_like_is(void)
{
    ASSERT_EVAL("region in ('US', 'EU')", POL_TRUE);
    ASSERT_EVAL("region in ('US', 'APAC')", POL_FALSE);
    ASSERT_EVAL("region not in ('US', 'APAC')", POL_TRUE);
    ASSERT_EVAL("qty in (1, 2.0, 3.0)", POL_TRUE);
    ASSERT_EVAL("region in (subject.region, 'x')", POL_TRUE);
    ASSERT_EVAL("'analysts' in subject.groups", POL_TRUE);
    ASSERT_EVAL("'admins' in subject.groups", POL_FALSE);
    ASSERT_EVAL("'admins' not in subject.groups", POL_TRUE);
    ASSERT_EVAL("'pii' in subject.clearance", POL_TRUE);
    ASSERT_EVAL("'EU' in subject.region", POL_TRUE); /* one-item list */
    ASSERT_EVAL("email like '%@Example.com'", POL_TRUE);
    ASSERT_EVAL("email like '%@example.com'", POL_FALSE); /* case */
    ASSERT_EVAL("email like 'Ann_Lee@%'", POL_TRUE);
    ASSERT_EVAL("email like 'Ann\\_Lee@%'", POL_FALSE); /* escaped _ */
    ASSERT_EVAL("email not like 'Ann%'", POL_FALSE);
    ASSERT_EVAL("'100%' like '100\\%'", POL_TRUE);
    ASSERT_EVAL("'1000' like '100\\%'", POL_FALSE);
    ASSERT_EVAL("'a\\' like 'a\\'", POL_TRUE); /* trailing \ is literal */
    ASSERT_EVAL("'ü' like '_'", POL_TRUE);     /* _ is one character */
    ASSERT_EVAL("'ü' like '__'", POL_FALSE);
    ASSERT_EVAL("'' like '%'", POL_TRUE);
    ASSERT_EVAL("'abcabd' like '%ab_'", POL_TRUE);
    ASSERT_EVAL("'abcab' like '%ab_'", POL_FALSE);
    ASSERT_EVAL("request.purpose like 'analy%'", POL_TRUE);
    ASSERT_EVAL("subject.name like subject.region", POL_FALSE);
    ASSERT_EVAL("note is null", POL_TRUE);
    ASSERT_EVAL("note is not null", POL_FALSE);
    ASSERT_EVAL("region is null", POL_FALSE);
    ASSERT_EVAL("subject.missing is null", POL_TRUE);
    ASSERT_EVAL("subject.team is null", POL_TRUE);          /* present, null */
    ASSERT_EVAL("subject.clearance is not null", POL_TRUE); /* a list */
    ASSERT_EVAL("subject.region is not null", POL_TRUE);
    ASSERT_EVAL("subject.groups is not null", POL_TRUE);
    ASSERT_EVAL("request.port == 'query' and request.product == 'orders'",
                POL_TRUE);
    ASSERT_EVAL("subject.name == 'ann'", POL_TRUE);
}

static void test_three_valued_logic(void)
{
    ASSERT_EVAL("note == 'x'", POL_UNKNOWN);
    ASSERT_EVAL("note != 'x'", POL_UNKNOWN);
    ASSERT_EVAL("not note == 'x'", POL_UNKNOWN);
    ASSERT_EVAL("null == null", POL_UNKNOWN);
    ASSERT_EVAL("note == 'x' and false", POL_FALSE);
    ASSERT_EVAL("note == 'x' and true", POL_UNKNOWN);
    ASSERT_EVAL("note == 'x' or true", POL_TRUE);
    ASSERT_EVAL("note == 'x' or false", POL_UNKNOWN);
    ASSERT_EVAL("note in ('x')", POL_UNKNOWN);
    ASSERT_EVAL("region in ('x', null)", POL_UNKNOWN);
    ASSERT_EVAL("region in ('EU', null)", POL_TRUE);
    ASSERT_EVAL("region not in ('x', null)", POL_UNKNOWN);
    ASSERT_EVAL("note like '%'", POL_UNKNOWN);
    ASSERT_EVAL("region like subject.missing", POL_UNKNOWN);
    /* An absent subject attribute compares unknown: a filter on it
     * matches no row, whatever the row holds. */
    ASSERT_EVAL("region == subject.missing", POL_UNKNOWN);
    ASSERT_EVAL("region != subject.missing", POL_UNKNOWN);
    ASSERT_EVAL("region == subject.team", POL_UNKNOWN);
    ASSERT_EVAL("region == subject.clearance", POL_UNKNOWN); /* a list */
    ASSERT_EVAL("'x' in subject.missing", POL_UNKNOWN);
    ASSERT_EVAL("'x' not in subject.missing", POL_UNKNOWN);
    ASSERT_EVAL("null", POL_UNKNOWN);
    ASSERT_EVAL("not null", POL_UNKNOWN);
    ASSERT_EVAL("(note == 'x') is null", POL_TRUE);
}

static void test_subject_and_request_absent(void)
{
    static const char *const none[1] = {NULL};
    pol_expr_subject empty_groups = {NULL, none, 0, NULL, 0};
    polis_error err = {0};
    pol_expr *e = NULL;
    pol_tri t;

    CU_ASSERT_EQUAL_FATAL(
        pol_expr_compile("'a' in subject.groups", NULL, &e, &err), 0);
    CU_ASSERT_EQUAL(pol_expr_eval(e, NULL, NULL, NULL, NULL, &t, &err), 0);
    CU_ASSERT_EQUAL(t, POL_UNKNOWN); /* no subject: absent list */
    CU_ASSERT_EQUAL(pol_expr_eval(e, NULL, NULL, &empty_groups, NULL, &t, &err),
                    0);
    CU_ASSERT_EQUAL(t, POL_FALSE); /* empty list */
    pol_expr_free(e);

    CU_ASSERT_EQUAL_FATAL(
        pol_expr_compile("null not in subject.groups", NULL, &e, &err), 0);
    CU_ASSERT_EQUAL(pol_expr_eval(e, NULL, NULL, &empty_groups, NULL, &t, &err),
                    0);
    CU_ASSERT_EQUAL(t, POL_TRUE); /* SQL: NULL NOT IN () is true */
    pol_expr_free(e);

    CU_ASSERT_EQUAL_FATAL(
        pol_expr_compile("request.purpose == 'x'", NULL, &e, &err), 0);
    CU_ASSERT_EQUAL(pol_expr_eval(e, NULL, NULL, NULL, NULL, &t, &err), 0);
    CU_ASSERT_EQUAL(t, POL_UNKNOWN);
    pol_expr_free(e);
}

static void test_parse_errors(void)
{
    expect_error("region == ", POLIS_EPARSE, "col 11",
                 "expected a value after \"==\", found the end");
    expect_error("qty == 1 and region ==) ", POLIS_EPARSE, "col 23",
                 "expected a value after \"==\", found \")\"");
    expect_error("region = 'EU'", POLIS_EPARSE, "col 8",
                 "unexpected \"=\" (use \"==\")");
    expect_error("region <> 'EU'", POLIS_EPARSE, "col 8", "use \"!=\"");
    expect_error("region == 'EU", POLIS_EPARSE, "col 11",
                 "unterminated string");
    expect_error("\"weird col == 1", POLIS_EPARSE, "col 1",
                 "unterminated quoted name");
    expect_error("(qty == 1", POLIS_EPARSE, "col 10",
                 "expected \")\" to close \"(\" at col 1, found the end");
    expect_error("qty == 1)", POLIS_EPARSE, "col 9", "unexpected \")\"");
    expect_error("region 'EU'", POLIS_EPARSE, "col 8", "expected an operator");
    expect_error("qty == 1 qty", POLIS_EPARSE, "col 10",
                 "expected \"and\", \"or\" or the end, found \"qty\"");
    expect_error("subject == 'x'", POLIS_EPARSE, "col 9",
                 "expected \".\" and an attribute name after \"subject\"");
    expect_error("request.who == 'x'", POLIS_EPARSE, "col 9",
                 "unknown request attribute \"who\"");
    expect_error("note is 5", POLIS_EPARSE, "col 9",
                 "expected \"null\" or \"not null\" after \"is\"");
    expect_error("region not 'x'", POLIS_EPARSE, "col 12",
                 "expected \"in\" or \"like\" after \"not\"");
    expect_error("region in 'x'", POLIS_EPARSE, "col 11", "expected a list");
    expect_error("region in ()", POLIS_EPARSE, "col 12", "empty list");
    expect_error("region in ('a' 'b')", POLIS_EPARSE, "col 16",
                 "expected \",\" or \")\" in the list");
    expect_error("qty == 99999999999999999999", POLIS_EPARSE, "col 8",
                 "integer out of range");
    expect_error("qty == 1.", POLIS_EPARSE, "col 10",
                 "expected digits after \".\"");
    expect_error("price == 1e999", POLIS_EPARSE, "col 10",
                 "decimal out of range");
    expect_error("qty # 1", POLIS_EPARSE, "col 5",
                 "unexpected character \"#\"");
    expect_error("", POLIS_EPARSE, "col 1", "empty expression");
    expect_error("   ", POLIS_EPARSE, "col 1", "empty expression");
    expect_error("and", POLIS_EPARSE, "col 1",
                 "expected a value, found \"and\"");
    expect_error("qty == 1 or", POLIS_EPARSE, "col 12",
                 "expected a value after \"or\"");
    expect_error("\"\" == 1", POLIS_EPARSE, "col 1", "empty quoted name");
}

static void test_type_errors(void)
{
    expect_error("1 == 'a'", POLIS_EINVAL, "col 3",
                 "cannot compare integer with string");
    expect_error("qty == 1 and region == 5", POLIS_EINVAL, "col 21",
                 "cannot compare string with integer");
    expect_error("regio == 'EU'", POLIS_EINVAL, "col 1",
                 "unknown column \"regio\"");
    expect_error("qty > 1 or \"Weird Col\" == 'x'", POLIS_EINVAL, "col 12",
                 "unknown column \"Weird Col\"");
    expect_error("active < true", POLIS_EINVAL, "col 8",
                 "booleans have no order");
    expect_error("region", POLIS_EINVAL, "col 1",
                 "expected a condition (true or false), found a string");
    expect_error("qty == 1 and 5", POLIS_EINVAL, "col 14",
                 "expected a condition");
    expect_error("not region", POLIS_EINVAL, "col 5", "expected a condition");
    expect_error("subject.groups == 'x'", POLIS_EINVAL, "col 16",
                 "a list cannot be compared");
    expect_error("qty like '1%'", POLIS_EINVAL, "col 5",
                 "\"like\" needs a string, found integer");
    expect_error("region like email", POLIS_EINVAL, "col 13",
                 "the pattern of \"like\" must be a string literal or a "
                 "subject/request value, not a column");
    expect_error("region like 5", POLIS_EINVAL, "col 13",
                 "must be a string, found integer");
    expect_error("qty in (1, 'two')", POLIS_EINVAL, "col 12",
                 "cannot compare integer with string in the list");
    expect_error("qty in subject.groups", POLIS_EINVAL, "col 5",
                 "cannot look for integer in a list of strings");
    expect_error("region in request.purpose", POLIS_EINVAL, "col 11",
                 "\"in\" needs a list");
    expect_error("subject.region == 1", POLIS_EINVAL, "col 16",
                 "cannot compare string with integer");
}

static void test_when_conditions_have_no_columns(void)
{
    polis_error err = {0};
    pol_expr *e = NULL;

    CU_ASSERT_EQUAL(pol_expr_compile("region == 'EU'", NULL, &e, &err),
                    POLIS_EINVAL);
    CU_ASSERT_STRING_EQUAL(err.where, "col 1");
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "cannot refer to columns"));
    CU_ASSERT_EQUAL(pol_expr_compile("request.purpose in ('a', 'b') and "
                                     "'x' in subject.groups",
                                     NULL, &e, &err),
                    0);
    CU_ASSERT_FALSE(pol_expr_uses_columns(e));
    pol_expr_free(e);
}

static void test_limits(void)
{
    char *src = malloc(POL_EXPR_MAX_LEN + 64);
    polis_error err = {0};
    pol_expr *e = NULL;
    size_t n;

    /* Exactly the maximum length parses; one byte more does not. */
    n = (size_t)snprintf(src, 64, "qty == 1 or region == '");
    memset(src + n, 'x', POL_EXPR_MAX_LEN - n - 1);
    src[POL_EXPR_MAX_LEN - 1] = '\'';
    src[POL_EXPR_MAX_LEN] = '\0';
    CU_ASSERT_EQUAL(pol_expr_compile(src, &schema, &e, &err), 0);
    pol_expr_free(e);
    src[POL_EXPR_MAX_LEN - 1] = 'x';
    src[POL_EXPR_MAX_LEN] = '\'';
    src[POL_EXPR_MAX_LEN + 1] = '\0';
    expect_error(src, POLIS_ETOOBIG, "col 4097",
                 "expression longer than 4096 bytes");

    /* Nesting: 64 parentheses are fine, 65 are not. */
    n = 0;
    for (int i = 0; i < POL_EXPR_MAX_DEPTH; i++)
        src[n++] = '(';
    n += (size_t)sprintf(src + n, "active");
    for (int i = 0; i < POL_EXPR_MAX_DEPTH; i++)
        src[n++] = ')';
    src[n] = '\0';
    CU_ASSERT_EQUAL(pol_expr_compile(src, &schema, &e, &err), 0);
    pol_expr_free(e);
    n = 0;
    for (int i = 0; i <= POL_EXPR_MAX_DEPTH; i++)
        src[n++] = '(';
    n += (size_t)sprintf(src + n, "active");
    for (int i = 0; i <= POL_EXPR_MAX_DEPTH; i++)
        src[n++] = ')';
    src[n] = '\0';
    expect_error(src, POLIS_ETOOBIG, "col 65", "nesting deeper than 64");
    /* ...and so does a chain of `not`. */
    n = 0;
    for (int i = 0; i <= POL_EXPR_MAX_DEPTH; i++)
        n += (size_t)sprintf(src + n, "not ");
    sprintf(src + n, "active");
    expect_error(src, POLIS_ETOOBIG, "col 257", "nesting deeper than 64");

    /* Lists: 256 values fine, 257 not. */
    n = (size_t)sprintf(src, "qty in (");
    for (int i = 0; i < POL_EXPR_MAX_LIST; i++)
        n += (size_t)sprintf(src + n, "%s%d", i ? "," : "", i % 10);
    sprintf(src + n, ")");
    CU_ASSERT_EQUAL(pol_expr_compile(src, &schema, &e, &err), 0);
    pol_expr_free(e);
    sprintf(src + n, ",1)");
    expect_error(src, POLIS_ETOOBIG, "col 521", "list longer than 256");

    /* Long and/or chains are flat, not deep: 400 terms are fine. */
    n = 0;
    for (int i = 0; i < 400; i++)
        n += (size_t)sprintf(src + n, "%sactive", i ? " or " : "");
    CU_ASSERT_EQUAL(pol_expr_compile(src, &schema, &e, &err), 0);
    pol_expr_free(e);

    /* Names are bounded too. */
    memset(src, 'c', POL_EXPR_MAX_IDENT + 1);
    strcpy(src + POL_EXPR_MAX_IDENT + 1, " == 1");
    expect_error(src, POLIS_ETOOBIG, "col 1", "name longer than 128");
    free(src);
}

static void test_columns_listed(void)
{
    polis_error err = {0};
    pol_expr *e = NULL;

    CU_ASSERT_EQUAL_FATAL(
        pol_expr_parse("region == 'EU' and (qty > 1 or region is null) and "
                       "\"weird col\" like subject.x and 'a' in subject.groups",
                       &e, &err),
        0);
    CU_ASSERT_EQUAL(pol_expr_column_count(e), 3);
    CU_ASSERT_STRING_EQUAL(pol_expr_column_name(e, 0), "region");
    CU_ASSERT_STRING_EQUAL(pol_expr_column_name(e, 1), "qty");
    CU_ASSERT_STRING_EQUAL(pol_expr_column_name(e, 2), "weird col");
    CU_ASSERT_PTR_NULL(pol_expr_column_name(e, 3));
    CU_ASSERT_TRUE(pol_expr_uses_columns(e));
    pol_expr_free(e);
    CU_ASSERT_EQUAL(pol_expr_column_count(NULL), 0);
}

static int lookup_upper(void *ctx, const char *name, pol_expr_type *type,
                        int *id)
{
    (void)ctx;
    if (strcmp(name, "AMOUNT") != 0)
        return POLIS_ENOTFOUND;
    *type = POL_EXPR_INTEGER;
    *id = 42;
    return 0;
}

static int get_amount(void *ctx, int id, const char *name, pol_expr_value *out)
{
    int64_t *v = ctx;
    CU_ASSERT_EQUAL(id, 42);
    CU_ASSERT_STRING_EQUAL(name, "AMOUNT");
    out->type = POL_EXPR_INTEGER;
    out->u.i = *v;
    return 0;
}

static void test_lookup_callback_and_row_errors(void)
{
    pol_expr_schema cb = {NULL, 0, lookup_upper, NULL};
    polis_error err = {0};
    pol_expr *e = NULL;
    int64_t amount = 7;
    pol_tri t;

    CU_ASSERT_EQUAL_FATAL(pol_expr_compile("AMOUNT > 5", &cb, &e, &err), 0);
    CU_ASSERT_EQUAL(pol_expr_eval(e, get_amount, &amount, NULL, NULL, &t, &err),
                    0);
    CU_ASSERT_EQUAL(t, POL_TRUE);
    /* The row accessor's error comes back as it is. */
    set_row();
    CU_ASSERT_EQUAL(pol_expr_eval(e, get_col, row, NULL, NULL, &t, &err),
                    POLIS_ENOTFOUND);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "\"AMOUNT\""));
    pol_expr_free(e);

    /* A row value of the wrong type is an error, not a silent false. */
    CU_ASSERT_EQUAL_FATAL(pol_expr_compile("qty == 3", &schema, &e, &err), 0);
    set_row();
    row[2].type = POL_EXPR_STRING;
    row[2].u.str = "3";
    row[2].len = 1;
    CU_ASSERT_EQUAL(pol_expr_eval(e, get_col, row, NULL, NULL, &t, &err),
                    POLIS_EINVAL);
    CU_ASSERT_PTR_NOT_NULL(strstr(err.message, "expected integer, got string"));
    CU_ASSERT_EQUAL(pol_expr_eval(e, NULL, NULL, NULL, NULL, &t, &err),
                    POLIS_EINVAL); /* a column but no row */
    pol_expr_free(e);

    /* SQLite hands booleans over as integers. */
    CU_ASSERT_EQUAL_FATAL(pol_expr_compile("active", &schema, &e, &err), 0);
    set_row();
    row[3].type = POL_EXPR_INTEGER;
    row[3].u.i = 0;
    CU_ASSERT_EQUAL(pol_expr_eval(e, get_col, row, NULL, NULL, &t, &err), 0);
    CU_ASSERT_EQUAL(t, POL_FALSE);
    pol_expr_free(e);

    /* Unchecked expressions are refused. */
    CU_ASSERT_EQUAL_FATAL(pol_expr_parse("true", &e, &err), 0);
    CU_ASSERT_EQUAL(pol_expr_eval(e, NULL, NULL, NULL, NULL, &t, &err),
                    POLIS_EINVAL);
    pol_expr_free(e);
}

static void test_short_circuit_reads_less(void)
{
    polis_error err = {0};
    pol_expr *e = NULL;
    pol_tri t;

    CU_ASSERT_EQUAL_FATAL(pol_expr_compile("qty == 0 and region == 'EU' and "
                                           "price > 1",
                                           &schema, &e, &err),
                          0);
    set_row();
    row_reads = 0;
    CU_ASSERT_EQUAL(pol_expr_eval(e, get_col, row, NULL, NULL, &t, &err), 0);
    CU_ASSERT_EQUAL(t, POL_FALSE);
    CU_ASSERT_EQUAL(row_reads, 1);
    pol_expr_free(e);
}

static void test_matches_ands_filters(void)
{
    polis_error err = {0};
    pol_expr *a = NULL, *b = NULL, *c = NULL;
    bool m = true;

    CU_ASSERT_EQUAL_FATAL(
        pol_expr_compile("region == subject.region", &schema, &a, &err), 0);
    CU_ASSERT_EQUAL_FATAL(pol_expr_compile("qty >= 3", &schema, &b, &err), 0);
    CU_ASSERT_EQUAL_FATAL(pol_expr_compile("note == 'x'", &schema, &c, &err),
                          0);
    {
        const pol_expr *ab[] = {a, b};
        const pol_expr *abc[] = {a, b, c};
        set_row();
        CU_ASSERT_EQUAL(
            pol_expr_matches(ab, 2, get_col, row, &subject, &request, &m, &err),
            0);
        CU_ASSERT_TRUE(m);
        CU_ASSERT_EQUAL(pol_expr_matches(abc, 3, get_col, row, &subject,
                                         &request, &m, &err),
                        0);
        CU_ASSERT_FALSE(m); /* unknown does not match */
        CU_ASSERT_EQUAL(pol_expr_matches(NULL, 0, get_col, row, &subject,
                                         &request, &m, &err),
                        0);
        CU_ASSERT_TRUE(m);
        /* Without the subject's region the filter matches nothing. */
        CU_ASSERT_EQUAL(
            pol_expr_matches(ab, 2, get_col, row, NULL, &request, &m, &err), 0);
        CU_ASSERT_FALSE(m);
    }
    pol_expr_free(a);
    pol_expr_free(b);
    pol_expr_free(c);
}

static void test_value_format(void)
{
    char buf[32];
    pol_expr_value v = {POL_EXPR_DECIMAL, 0, {.d = 0.1}};

    CU_ASSERT_EQUAL(pol_expr_value_format(&v, buf, sizeof(buf)), 0);
    CU_ASSERT_EQUAL(strtod(buf, NULL), 0.1);
    v.type = POL_EXPR_INTEGER;
    v.u.i = -42;
    CU_ASSERT_EQUAL(pol_expr_value_format(&v, buf, sizeof(buf)), 0);
    CU_ASSERT_STRING_EQUAL(buf, "-42");
    CU_ASSERT_EQUAL(pol_expr_value_format(&v, buf, 3), POLIS_ETOOBIG);
    v.type = POL_EXPR_BOOLEAN;
    v.u.b = true;
    CU_ASSERT_EQUAL(pol_expr_value_format(&v, buf, sizeof(buf)), 0);
    CU_ASSERT_STRING_EQUAL(buf, "true");
    v.type = POL_EXPR_NULL;
    CU_ASSERT_EQUAL(pol_expr_value_format(&v, buf, sizeof(buf)), POLIS_EINVAL);
}

static void test_free_null_and_bad_args(void)
{
    polis_error err = {0};
    pol_expr *e = (pol_expr *)&err;
    char *s = (char *)&err;

    pol_expr_free(NULL);
    pol_expr_sql_free(NULL);
    CU_ASSERT_EQUAL(pol_expr_parse(NULL, &e, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NULL(e);
    CU_ASSERT_EQUAL(pol_expr_to_string(NULL, &s, &err), POLIS_EINVAL);
    CU_ASSERT_PTR_NULL(s);
    CU_ASSERT_STRING_EQUAL(pol_expr_type_name(POL_EXPR_DECIMAL), "decimal");
}

static const test_case parse_cases[] = {
    {"round_trip", test_round_trip},
    {"parse_errors", test_parse_errors},
    {"limits", test_limits},
    {"columns_listed", test_columns_listed},
    {"free_null_and_bad_args", test_free_null_and_bad_args},
    {NULL, NULL},
};

static const test_case check_cases[] = {
    {"type_errors", test_type_errors},
    {"when_conditions_have_no_columns", test_when_conditions_have_no_columns},
    {"lookup_callback_and_row_errors", test_lookup_callback_and_row_errors},
    {NULL, NULL},
};

static const test_case eval_cases[] = {
    {"precedence", test_precedence},
    {"comparison_operators", test_comparison_operators},
    {"in_like_is", test_in_like_is},
    {"three_valued_logic", test_three_valued_logic},
    {"subject_and_request_absent", test_subject_and_request_absent},
    {"short_circuit_reads_less", test_short_circuit_reads_less},
    {"matches_ands_filters", test_matches_ands_filters},
    {"value_format", test_value_format},
    {NULL, NULL},
};

static const test_suite suites[] = {
    {"parse", NULL, NULL, parse_cases},
    {"check", NULL, NULL, check_cases},
    {"eval", NULL, NULL, eval_cases},
    {NULL, NULL, NULL, NULL},
};

int main(int argc, char **argv)
{
    return test_main(argc, argv, suites);
}
