"""gotemplate.py — a small interpreter for the part of Go's text/template
language, and of the Sprig/Helm functions, that the Polis chart uses.  It
exists because this project's machines have no helm binary: render_check.py
renders the chart with it.  It follows Go's semantics where Helm users get
bitten (whitespace trimming, float64 values, strict comparisons, nil field
access) and is stricter than Helm where that catches mistakes (printing nil
or a map is an error).  Anything outside the subset is an error, never a
silent guess.
"""
import json
import math
import re
from decimal import Decimal

import yaml


class TemplateError(Exception):
    """A parse or execution error, with template name and line."""


class TemplateFail(TemplateError):
    """The template called `fail` or `required`: an intended refusal."""


# ---- lexing ---------------------------------------------------------------

_SPACE = " \t\r\n"


def _split(name, src):
    """Split template text into ('text', s, line) and ('action', s, line,
    trim_left, trim_right) pieces, applying the {{- -}} trimming."""
    pieces = []
    pos = 0
    line = 1
    while True:
        start = src.find("{{", pos)
        if start < 0:
            pieces.append(["text", src[pos:], line])
            break
        pieces.append(["text", src[pos:start], line])
        line += src.count("\n", pos, start)
        i = start + 2
        trim_left = src[i : i + 2] in ("- ", "-\t", "-\n", "-\r")
        if trim_left:
            i += 1
        j = i
        # Scan to the closing }}, skipping string literals and comments.
        while True:
            if j >= len(src):
                raise TemplateError("%s:%d: unclosed action" % (name, line))
            if src.startswith("/*", j):
                k = src.find("*/", j + 2)
                if k < 0:
                    raise TemplateError(
                        "%s:%d: unclosed comment" % (name, line))
                j = k + 2
                continue
            c = src[j]
            if c in "\"`":
                k = j + 1
                while k < len(src) and src[k] != c:
                    if c == '"' and src[k] == "\\":
                        k += 1
                    if k < len(src) and src[k] == "\n" and c == '"':
                        raise TemplateError(
                            "%s:%d: newline in string" % (name, line))
                    k += 1
                j = k + 1
                continue
            if src.startswith("}}", j):
                break
            if src.startswith("{{", j):
                raise TemplateError(
                    "%s:%d: '{{' inside an action" % (name, line))
            j += 1
        body = src[i:j]
        trim_right = len(body) >= 2 and body[-1] == "-" and body[-2] in _SPACE
        if trim_right:
            body = body[:-1]
        if "/*" in body:
            # Go accepts a comment only right after the delimiter (and its
            # trim marker) and only as the whole action.
            want = " /*" if trim_left else "/*"
            end = "*/ " if trim_right else "*/"
            if not (body.startswith(want) and body.endswith(end)):
                raise TemplateError("%s:%d: a comment must fill its action: "
                                    "{{/* ... */}} or {{- /* ... */ -}}" %
                                    (name, line))
            body = ""
        pieces.append(["action", body, line, trim_left, trim_right])
        line += src.count("\n", start, j)
        pos = j + 2
    # Apply trimming to the neighbouring text pieces.
    for k, p in enumerate(pieces):
        if p[0] != "action":
            continue
        if p[3] and k > 0:
            pieces[k - 1][1] = pieces[k - 1][1].rstrip(_SPACE)
        if p[4] and k + 1 < len(pieces):
            pieces[k + 1][1] = pieces[k + 1][1].lstrip(_SPACE)
    return pieces


_TOKEN = re.compile(r"""
    (?P<ws>\s+)
  | (?P<comment>/\*.*?\*/)
  | (?P<str>"(?:[^"\\]|\\.)*")
  | (?P<raw>`[^`]*`)
  | (?P<num>-?\d+(?:\.\d+)?)
  | (?P<decl>:=)
  | (?P<assign>=)
  | (?P<pipe>\|)
  | (?P<lp>\()
  | (?P<rp>\))
  | (?P<comma>,)
  | (?P<var>\$[A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)
  | (?P<field>(?:\.[A-Za-z_][A-Za-z0-9_]*)+|\.)
  | (?P<ident>[A-Za-z_][A-Za-z0-9_]*)
""", re.X | re.S)


def _tokens(name, line, body):
    out = []
    pos = 0
    while pos < len(body):
        m = _TOKEN.match(body, pos)
        if m is None:
            raise TemplateError("%s:%d: cannot read %r" %
                                (name, line, body[pos:pos + 20]))
        kind = m.lastgroup
        text = m.group(kind)
        pos = m.end()
        if kind in ("ws", "comment"):
            continue
        out.append((kind, text))
    return out


# ---- parsing --------------------------------------------------------------

class _Parser:
    def __init__(self, name, src):
        self.name = name
        self.pieces = _split(name, src)
        self.k = 0
        self.defines = {}

    def where(self, line):
        return "%s:%d" % (self.name, line)

    def parse(self):
        body, end = self.parse_list(())
        if end is not None:
            raise TemplateError("%s: unexpected {{%s}}" %
                                (self.where(end[2]), end[0]))
        return body

    def parse_list(self, stops):
        """Parse until one of the keywords in stops; returns (nodes, stop)
        where stop is (keyword, tokens, line) or None at end of input."""
        nodes = []
        while self.k < len(self.pieces):
            p = self.pieces[self.k]
            self.k += 1
            if p[0] == "text":
                if p[1]:
                    nodes.append(("text", p[1]))
                continue
            line = p[2]
            toks = _tokens(self.name, line, p[1])
            if not toks:
                continue  # a comment
            head = toks[0]
            if head[0] == "ident" and head[1] in ("end", "else"):
                if head[1] not in stops:
                    raise TemplateError("%s: unexpected {{%s}}" %
                                        (self.where(line), head[1]))
                return nodes, (head[1], toks[1:], line)
            if head[0] == "ident" and head[1] == "if":
                nodes.append(self.parse_if(toks[1:], line))
            elif head[0] == "ident" and head[1] in ("range", "with"):
                nodes.append(self.parse_block(head[1], toks[1:], line))
            elif head[0] == "ident" and head[1] == "define":
                if len(toks) != 2 or toks[1][0] != "str":
                    raise TemplateError("%s: define needs a name" %
                                        self.where(line))
                body, stop = self.parse_list(("end",))
                if stop is None:
                    raise TemplateError("%s: define without end" %
                                        self.where(line))
                self.defines[json.loads(toks[1][1])] = body
            elif head[0] == "ident" and head[1] in ("template", "block",
                                                    "break", "continue"):
                raise TemplateError("%s: {{%s}} is outside the subset "
                                    "(use include)" % (self.where(line),
                                                       head[1]))
            else:
                nodes.append(("action", self.pipeline(toks, line), line))
        return nodes, None

    def parse_if(self, toks, line):
        branches = [(self.pipeline(toks, line), None)]
        else_body = []
        while True:
            body, stop = self.parse_list(("end", "else"))
            if stop is None:
                raise TemplateError("%s: if without end" % self.where(line))
            branches[-1] = (branches[-1][0], body)
            if stop[0] == "end":
                break
            rest = stop[1]
            if rest and rest[0] == ("ident", "if"):
                branches.append((self.pipeline(rest[1:], stop[2]), None))
                continue
            if rest:
                raise TemplateError("%s: else %s is outside the subset" %
                                    (self.where(stop[2]), rest[0][1]))
            else_body, stop = self.parse_list(("end",))
            if stop is None:
                raise TemplateError("%s: if without end" % self.where(line))
            break
        return ("if", branches, else_body, line)

    def parse_block(self, kind, toks, line):
        pipe = self.pipeline(toks, line, allow_range_vars=(kind == "range"))
        body, stop = self.parse_list(("end", "else"))
        if stop is None:
            raise TemplateError("%s: %s without end" % (self.where(line), kind))
        else_body = []
        if stop[0] == "else":
            if stop[1]:
                raise TemplateError("%s: else %s is outside the subset" %
                                    (self.where(stop[2]), stop[1][0][1]))
            else_body, stop = self.parse_list(("end",))
            if stop is None:
                raise TemplateError("%s: %s without end" %
                                    (self.where(line), kind))
        return (kind, pipe, body, else_body, line)

    def pipeline(self, toks, line, allow_range_vars=False):
        """pipeline := [vars (':='|'=')] command ('|' command)*"""
        decl = None
        variables = []
        i = 0
        # Look for "$a :=", "$a =", "$a, $b :=".
        j = 0
        names = []
        while j < len(toks) and toks[j][0] == "var":
            names.append(toks[j][1])
            if j + 1 < len(toks) and toks[j + 1][0] == "comma":
                j += 2
                continue
            j += 1
            break
        if names and j < len(toks) and toks[j][0] in ("decl", "assign"):
            if len(names) > 1 and not allow_range_vars:
                raise TemplateError("%s: too many variables" %
                                    self.where(line))
            variables = names
            decl = toks[j][0]
            i = j + 1
        cmds = []
        cur = []
        depth = 0
        for t in toks[i:]:
            if t[0] == "lp":
                depth += 1
            elif t[0] == "rp":
                depth -= 1
            if t[0] == "pipe" and depth == 0:
                cmds.append(cur)
                cur = []
            else:
                cur.append(t)
        cmds.append(cur)
        if depth != 0:
            raise TemplateError("%s: unbalanced parentheses" %
                                self.where(line))
        parsed = []
        for c in cmds:
            if not c:
                raise TemplateError("%s: empty command" % self.where(line))
            parsed.append(self.command(c, line))
        return ("pipeline", decl, variables, parsed, line)

    def command(self, toks, line):
        operands = []
        i = 0
        while i < len(toks):
            kind, text = toks[i]
            if kind == "lp":
                depth = 1
                j = i + 1
                while depth:
                    if toks[j][0] == "lp":
                        depth += 1
                    elif toks[j][0] == "rp":
                        depth -= 1
                    j += 1
                operands.append(("paren", self.pipeline(toks[i + 1:j - 1],
                                                        line)))
                i = j
                continue
            if kind == "str":
                operands.append(("lit", _go_string(text)))
            elif kind == "raw":
                operands.append(("lit", text[1:-1]))
            elif kind == "num":
                operands.append(("lit", float(text) if "." in text
                                 else int(text)))
            elif kind == "ident" and text in ("true", "false"):
                operands.append(("lit", text == "true"))
            elif kind == "ident" and text == "nil":
                operands.append(("lit", None))
            elif kind == "ident":
                operands.append(("func", text))
            elif kind == "field":
                operands.append(("field", text))
            elif kind == "var":
                operands.append(("var", text))
            else:
                raise TemplateError("%s: unexpected %r" %
                                    (self.where(line), text))
            i += 1
        return operands


def _go_string(text):
    try:
        return json.loads(text)
    except ValueError:
        raise TemplateError("bad string literal %s" % text)


# ---- values as Go sees them ----------------------------------------------

def go_values(v):
    """Helm reads values through JSON: every number becomes a float64."""
    if isinstance(v, bool) or v is None or isinstance(v, str):
        return v
    if isinstance(v, (int, float)):
        return float(v)
    if isinstance(v, dict):
        return {str(k): go_values(x) for k, x in v.items()}
    if isinstance(v, list):
        return [go_values(x) for x in v]
    return v


def _go_float(f):
    """fmt's %v of a float64 (strconv 'g', shortest): %e when the decimal
    exponent is below -4 or at least 6, which is why Helm prints 1e+06."""
    if math.isinf(f):
        return "+Inf" if f > 0 else "-Inf"
    if math.isnan(f):
        return "NaN"
    if f == 0:
        return "0"
    sign, digit_tuple, exp = Decimal(repr(f)).normalize().as_tuple()
    digits = "".join(str(d) for d in digit_tuple)
    e10 = len(digits) - 1 + exp
    s = "-" if sign else ""
    if e10 < -4 or e10 >= 6:
        m = digits[0] + ("." + digits[1:] if len(digits) > 1 else "")
        return "%s%se%s%02d" % (s, m, "-" if e10 < 0 else "+", abs(e10))
    if e10 >= len(digits) - 1:
        return s + digits + "0" * (e10 - len(digits) + 1)
    if e10 >= 0:
        return s + digits[:e10 + 1] + "." + digits[e10 + 1:]
    return s + "0." + "0" * (-e10 - 1) + digits


def go_print(v, where="value"):
    """What {{ v }} prints; nil, maps and lists are errors here."""
    if v is None:
        raise TemplateError("%s: printing a missing value (<no value>)" %
                            where)
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return _go_float(v)
    if isinstance(v, str):
        return v
    raise TemplateError("%s: printing a %s" % (where, kind_of(v)))


def strval(v):
    if isinstance(v, str):
        return v
    if v is None:
        return "<nil>"
    if isinstance(v, (list, dict)):
        raise TemplateError("converting a %s to a string" % kind_of(v))
    return go_print(v)


def kind_of(v):
    if v is None:
        return "invalid"
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, int):
        return "int"
    if isinstance(v, float):
        return "float64"
    if isinstance(v, str):
        return "string"
    if isinstance(v, dict):
        return "map"
    if isinstance(v, list):
        return "slice"
    return type(v).__name__


def truthy(v):
    if v is None or v is False:
        return False
    if isinstance(v, (int, float)) and not isinstance(v, bool):
        return v != 0
    if isinstance(v, (str, list, dict)):
        return len(v) > 0
    return True


def to_int(v):
    if v is None:
        return 0
    if isinstance(v, bool):
        return int(v)
    if isinstance(v, (int, float)):
        return int(v)
    if isinstance(v, str):
        try:
            return int(v, 10)
        except ValueError:
            return 0
    raise TemplateError("cannot convert a %s to int" % kind_of(v))


def _plain(v):
    """Go's JSON→YAML marshalling prints integral float64 as integers."""
    if isinstance(v, float) and v.is_integer() and abs(v) < 1e21:
        return int(v)
    if isinstance(v, dict):
        return {k: _plain(x) for k, x in v.items()}
    if isinstance(v, list):
        return [_plain(x) for x in v]
    return v


def _to_yaml(v):
    """Sprig's toYaml: sorted keys, block style, no trailing newline."""
    out = yaml.safe_dump(_plain(v), default_flow_style=False, sort_keys=True,
                         allow_unicode=True, width=1 << 30)
    if out.endswith("\n...\n"):
        out = out[:-4]
    return out.rstrip("\n")


def _go_format(fmt, args):
    out = []
    i = 0
    a = 0
    while i < len(fmt):
        c = fmt[i]
        if c != "%":
            out.append(c)
            i += 1
            continue
        verb = fmt[i + 1] if i + 1 < len(fmt) else ""
        i += 2
        if verb == "%":
            out.append("%")
            continue
        if a >= len(args):
            raise TemplateError("printf: missing argument for %%%s" % verb)
        v = args[a]
        a += 1
        if verb == "s":
            if not isinstance(v, str):
                raise TemplateError("printf %%s of a %s (Go prints "
                                    "%%!s(...))" % kind_of(v))
            out.append(v)
        elif verb == "d":
            if isinstance(v, bool) or not isinstance(v, int):
                raise TemplateError("printf %%d of a %s (Go prints "
                                    "%%!d(...); use int)" % kind_of(v))
            out.append(str(v))
        elif verb == "v":
            out.append(go_print(v, "printf %v"))
        elif verb == "q":
            out.append(_go_quote(strval(v)))
        else:
            raise TemplateError("printf: verb %%%s is outside the subset" %
                                verb)
    if a != len(args):
        raise TemplateError("printf: %d extra argument(s)" % (len(args) - a))
    return "".join(out)


def _go_quote(s):
    return json.dumps(s, ensure_ascii=False)


def _compare(name, a, b):
    num = (int, float)
    if isinstance(a, bool) or isinstance(b, bool):
        if type(a) is not type(b):
            raise TemplateError("%s: incompatible types for comparison" % name)
    elif isinstance(a, num) and isinstance(b, num):
        if type(a) is not type(b):
            raise TemplateError(
                "%s: incompatible types for comparison (%s and %s; Helm "
                "values are float64, use int)" % (name, kind_of(a),
                                                  kind_of(b)))
    elif a is not None and b is not None and type(a) is not type(b):
        raise TemplateError("%s: incompatible types for comparison (%s "
                            "and %s)" % (name, kind_of(a), kind_of(b)))


# ---- execution ------------------------------------------------------------

class Engine:
    """Parses a set of templates (name → text) and renders them."""

    def __init__(self, sources):
        self.trees = {}
        self.defines = {}
        for name, src in sources.items():
            p = _Parser(name, src)
            self.trees[name] = p.parse()
            for dname, body in p.defines.items():
                if dname in self.defines:
                    raise TemplateError("%s: template %r defined twice" %
                                        (name, dname))
                self.defines[dname] = body
        self.depth = 0

    def render(self, name, data):
        out = []
        self._exec(self.trees[name], data, [{"$": data}], out, name)
        return "".join(out)

    def include(self, tname, data, where):
        if tname not in self.defines:
            raise TemplateError("%s: no template %r" % (where, tname))
        self.depth += 1
        if self.depth > 100:
            raise TemplateError("%s: include nested too deeply" % where)
        try:
            out = []
            self._exec(self.defines[tname], data, [{"$": data}], out, tname)
        finally:
            self.depth -= 1
        return "".join(out)

    # scopes is a list of dicts, innermost last.
    def _exec(self, nodes, dot, scopes, out, tname):
        for n in nodes:
            kind = n[0]
            if kind == "text":
                out.append(n[1])
            elif kind == "action":
                pipe = n[1]
                v = self._pipeline(pipe, dot, scopes, tname)
                if pipe[1] is None:
                    out.append(go_print(v, "%s:%d" % (tname, n[2])))
            elif kind == "if":
                done = False
                for cond, body in n[1]:
                    scopes.append({})
                    try:
                        if truthy(self._pipeline(cond, dot, scopes, tname)):
                            self._exec(body, dot, scopes, out, tname)
                            done = True
                    finally:
                        scopes.pop()
                    if done:
                        break
                if not done and n[2]:
                    scopes.append({})
                    self._exec(n[2], dot, scopes, out, tname)
                    scopes.pop()
            elif kind == "with":
                scopes.append({})
                try:
                    v = self._pipeline(n[1], dot, scopes, tname)
                    if truthy(v):
                        self._exec(n[2], v, scopes, out, tname)
                    elif n[3]:
                        self._exec(n[3], dot, scopes, out, tname)
                finally:
                    scopes.pop()
            elif kind == "range":
                self._range(n, dot, scopes, out, tname)

    def _range(self, n, dot, scopes, out, tname):
        pipe = n[1]
        variables = pipe[2]
        scopes.append({})
        try:
            v = self._pipeline(("pipeline", None, [], pipe[3], pipe[4]), dot,
                               scopes, tname)
            if v is None:
                items = []
            elif isinstance(v, list):
                items = list(enumerate(v))
            elif isinstance(v, dict):
                items = [(k, v[k]) for k in sorted(v)]
            elif isinstance(v, int) and not isinstance(v, bool):
                items = [(i, i) for i in range(v)]
            else:
                raise TemplateError("%s:%d: range over a %s" %
                                    (tname, pipe[4], kind_of(v)))
            if not items and n[3]:
                self._exec(n[3], dot, scopes, out, tname)
            for key, elem in items:
                scopes.append({})
                if len(variables) == 1:
                    scopes[-1][variables[0]] = elem
                elif len(variables) == 2:
                    scopes[-1][variables[0]] = key
                    scopes[-1][variables[1]] = elem
                self._exec(n[2], elem, scopes, out, tname)
                scopes.pop()
        finally:
            scopes.pop()

    def _pipeline(self, pipe, dot, scopes, tname):
        _, decl, variables, cmds, line = pipe
        where = "%s:%d" % (tname, line)
        v = None
        first = True
        for cmd in cmds:
            v = self._command(cmd, dot, scopes, None if first else (v,),
                              where)
            first = False
        if decl == "decl":
            scopes[-1][variables[0]] = v
        elif decl == "assign":
            for s in reversed(scopes):
                if variables[0] in s:
                    s[variables[0]] = v
                    break
            else:
                raise TemplateError("%s: undefined variable %s" %
                                    (where, variables[0]))
        return v

    def _lookup_var(self, name, scopes, where):
        base, _, rest = name.partition(".")
        for s in reversed(scopes):
            if base in s:
                v = s[base]
                break
        else:
            raise TemplateError("%s: undefined variable %s" % (where, base))
        return self._fields(v, rest.split(".") if rest else [], where, name)

    def _fields(self, v, names, where, expr):
        for f in names:
            if v is None:
                raise TemplateError("%s: nil pointer evaluating %s (at .%s)"
                                    % (where, expr, f))
            if not isinstance(v, dict):
                raise TemplateError("%s: can't evaluate field %s in a %s "
                                    "(%s)" % (where, f, kind_of(v), expr))
            v = v.get(f)
        return v

    def _operand(self, op, dot, scopes, where):
        kind, x = op
        if kind == "lit":
            return x
        if kind == "field":
            if x == ".":
                return dot
            return self._fields(dot, x[1:].split("."), where, x)
        if kind == "var":
            return self._lookup_var(x, scopes, where)
        if kind == "paren":
            return self._pipeline(x, dot, scopes, where.split(":")[0])
        if kind == "func":
            return self._call(x, [], where)
        raise TemplateError("%s: bad operand" % where)

    def _command(self, ops, dot, scopes, final, where):
        head = ops[0]
        if head[0] == "func":
            args = [self._operand(o, dot, scopes, where) for o in ops[1:]]
            if final is not None:
                args.extend(final)
            return self._call(head[1], args, where)
        if len(ops) > 1 or final is not None:
            raise TemplateError("%s: can't give arguments to a non-function"
                                % where)
        return self._operand(head, dot, scopes, where)

    def _call(self, name, args, where):
        fn = getattr(self, "_f_" + name, None)
        if fn is None:
            raise TemplateError("%s: function %r is outside the subset" %
                                (where, name))
        try:
            return fn(where, *args)
        except TypeError as e:
            raise TemplateError("%s: %s: wrong number of arguments (%s)" %
                                (where, name, e))

    # ---- the functions (Go builtins, Sprig, Helm) ----
    def _f_include(self, where, name, data):
        return self.include(name, data, where)

    def _f_fail(self, where, msg):
        raise TemplateFail("%s: fail: %s" % (where, msg))

    def _f_required(self, where, msg, v):
        if v is None or v == "":
            raise TemplateFail("%s: required: %s" % (where, msg))
        return v

    def _f_default(self, where, d, *given):
        if len(given) > 1:
            raise TemplateError("%s: default takes one value" % where)
        v = given[0] if given else None
        return v if truthy(v) else d

    def _f_empty(self, where, v):
        return not truthy(v)

    def _f_not(self, where, v):
        return not truthy(v)

    def _f_and(self, where, *args):
        for a in args:
            if not truthy(a):
                return a
        return args[-1]

    def _f_or(self, where, *args):
        for a in args:
            if truthy(a):
                return a
        return args[-1]

    def _f_eq(self, where, a, *bs):
        for b in bs:
            _compare("eq", a, b)
            if a == b:
                return True
        return False

    def _f_ne(self, where, a, b):
        _compare("ne", a, b)
        return a != b

    def _ordered(self, name, a, b):
        _compare(name, a, b)
        if a is None or isinstance(a, (bool, dict, list)):
            raise TemplateError("%s: invalid type for comparison" % name)

    def _f_lt(self, where, a, b):
        self._ordered("lt", a, b)
        return a < b

    def _f_le(self, where, a, b):
        self._ordered("le", a, b)
        return a <= b

    def _f_gt(self, where, a, b):
        self._ordered("gt", a, b)
        return a > b

    def _f_ge(self, where, a, b):
        self._ordered("ge", a, b)
        return a >= b

    def _f_len(self, where, v):
        if not isinstance(v, (str, list, dict)):
            raise TemplateError("%s: len of a %s" % (where, kind_of(v)))
        return len(v)

    def _f_int(self, where, v):
        return to_int(v)

    _f_int64 = _f_int

    def _f_add(self, where, *args):
        return sum(to_int(a) for a in args)

    def _f_sub(self, where, a, b):
        return to_int(a) - to_int(b)

    def _f_div(self, where, a, b):
        a, b = to_int(a), to_int(b)
        if b == 0:
            raise TemplateError("%s: division by zero" % where)
        q = abs(a) // abs(b)
        return q if (a >= 0) == (b >= 0) else -q

    def _f_until(self, where, n):
        return list(range(to_int(n)))

    def _f_list(self, where, *args):
        return list(args)

    def _f_append(self, where, lst, v):
        if not isinstance(lst, list):
            raise TemplateError("%s: append to a %s" % (where, kind_of(lst)))
        return lst + [v]

    def _f_dict(self, where, *args):
        if len(args) % 2:
            raise TemplateError("%s: dict needs key/value pairs" % where)
        return {strval(args[i]): args[i + 1] for i in range(0, len(args), 2)}

    def _f_has(self, where, needle, haystack):
        if not isinstance(haystack, list):
            raise TemplateError("%s: has in a %s" % (where, kind_of(haystack)))
        return any(type(x) is type(needle) and x == needle for x in haystack)

    def _f_hasKey(self, where, d, key):
        if not isinstance(d, dict):
            raise TemplateError("%s: hasKey on a %s" % (where, kind_of(d)))
        return key in d

    def _f_set(self, where, d, key, v):
        d[key] = v
        return d

    def _f_ternary(self, where, vt, vf, cond):
        if not isinstance(cond, bool):
            raise TemplateError("%s: ternary: condition is a %s, not a bool"
                                % (where, kind_of(cond)))
        return vt if cond else vf

    def _f_kindIs(self, where, kind, v):
        return kind_of(v) == kind

    def _f_toString(self, where, v):
        return strval(v)

    def _f_quote(self, where, *args):
        return " ".join(_go_quote(strval(a)) for a in args if a is not None)

    def _f_printf(self, where, fmt, *args):
        try:
            return _go_format(fmt, list(args))
        except TemplateError as e:
            raise TemplateError("%s: %s" % (where, e))

    def _f_print(self, where, *args):
        return "".join(strval(a) for a in args)

    def _f_join(self, where, sep, lst):
        if lst is None:
            return ""
        if not isinstance(lst, list):
            raise TemplateError("%s: join of a %s" % (where, kind_of(lst)))
        return sep.join(strval(x) for x in lst)

    def _f_trunc(self, where, n, s):
        n = to_int(n)
        s = strval(s)
        if n < 0:
            return s[n:] if -n < len(s) else s
        return s[:n]

    def _f_trimSuffix(self, where, suffix, s):
        return s[:-len(suffix)] if suffix and s.endswith(suffix) else s

    def _f_trimPrefix(self, where, prefix, s):
        return s[len(prefix):] if prefix and s.startswith(prefix) else s

    def _f_contains(self, where, sub, s):
        return strval(sub) in strval(s)

    def _f_hasPrefix(self, where, prefix, s):
        return strval(s).startswith(strval(prefix))

    def _f_replace(self, where, old, new, s):
        return strval(s).replace(old, new)

    def _f_lower(self, where, s):
        return strval(s).lower()

    def _f_upper(self, where, s):
        return strval(s).upper()

    def _f_regexMatch(self, where, pattern, s):
        return re.search(pattern, strval(s)) is not None

    def _f_toYaml(self, where, v):
        return _to_yaml(v)

    def _f_indent(self, where, n, s):
        pad = " " * to_int(n)
        return pad + strval(s).replace("\n", "\n" + pad)

    def _f_nindent(self, where, n, s):
        return "\n" + self._f_indent(where, n, s)
