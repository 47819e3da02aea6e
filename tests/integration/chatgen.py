"""Random template generator for differential testing: small templates built
from the Jinja subset the engine supports (expressions, filters, tests,
string methods, loops, conditionals, set/namespace, whitespace control)."""
import random

STRS = ["''", "'a'", "'Hello World'", "' x '", "'a,b,,c'", "'é日👋'", "'\\n'", "'<think>x</think>y'", "\"it's\"",
        "'abc'", "'ABC'", "'42'", "'3.5'", "'  '"]
NUMS = ["0", "1", "2", "-1", "3", "10", "1.5", "0.1", "-2.5", "1e3", "7"]
ATOMS = STRS + NUMS + ["none", "true", "false", "[]", "[1, 2, 3]", "['b', 'a']", "{}", "{'k': 'v', 'n': 1}",
                       "messages", "messages[0]", "messages[-1]", "messages[1].content", "m", "undef", "ns.v",
                       "messages[0].role", "(1, 'x')", "range(3)", "loop.index", "loop.first", "loop.last"]
FILTERS = ["length", "trim", "upper", "lower", "title", "capitalize", "string", "first", "last", "list",
           "tojson", "int", "float", "abs", "reverse|list", "sort", "unique|list", "join(',')", "default('d')",
           "default('d', true)", "replace('a', 'b')", "items|list", "selectattr('role', 'equalto', 'user')|list",
           "map(attribute='role')|list", "select|list", "reject|list", "min", "max", "sum", "count",
           "tojson(indent=2)", "tojson(sort_keys=true)", "join", "map('upper')|list",
           "rejectattr('content')|list", "trim('a')", "first|default('z')", "indent", "indent(2, true, true)",
           "dictsort", "dictsort(by='value')"]
TESTS = ["defined", "undefined", "none", "string", "number", "integer", "float", "mapping", "iterable",
         "sequence", "boolean", "true", "false", "odd", "even", "divisibleby 2", "eq 1", "lower", "upper",
         "in [1, 'a']", "callable", "sameas none", "gt 0", "ne 'a'"]
METHODS = ["strip()", "lstrip()", "rstrip('\\n')", "upper()", "lower()", "title()", "capitalize()", "split()",
           "split(',')", "rsplit(',', 1)", "startswith('a')", "endswith(('c', 'x'))", "replace('a', 'Z')",
           "find('b')", "count('a')", "split('</think>')[-1]", "isdigit()", "format(1, 2)", "items()|list",
           "get('role')", "get('x', 'dflt')", "keys()|list", "values()|list"]
BINOPS = ["+", "-", "*", "/", "//", "%", "~", "==", "!=", "<", ">", "<=", ">=", "in", "not in", "and", "or", "**"]


class Gen:
    def __init__(self, seed):
        self.r = random.Random(seed)

    def expr(self, d=0):
        r = self.r
        k = r.random()
        if d > 2 or k < 0.3:
            return r.choice(ATOMS)
        if k < 0.45:
            return "%s|%s" % (self.expr(d + 1), r.choice(FILTERS))
        if k < 0.55:
            return "(%s is %s%s)" % (self.expr(d + 1), r.choice(["", "not "]), r.choice(TESTS))
        if k < 0.65:
            return "%s.%s" % (r.choice(STRS + ["messages[0]", "m", "messages[1].content", "{'role': 'r'}"]), r.choice(METHODS))
        if k < 0.82:
            return "(%s %s %s)" % (self.expr(d + 1), r.choice(BINOPS), self.expr(d + 1))
        if k < 0.87:
            return "(not %s)" % self.expr(d + 1)
        if k < 0.92:
            return "(%s if %s else %s)" % (self.expr(d + 1), self.expr(d + 1), self.expr(d + 1))
        if k < 0.96:
            a = r.choice(["", "1", "-1", "0", "2"])
            b = r.choice(["", "2", "-1", "10"])
            s = r.choice(["", ":-1", ":2", ""])
            return "%s[%s:%s%s]" % (r.choice(STRS + ["messages", "[1, 2, 3]"]), a, b, s)
        return "[%s, %s]" % (self.expr(d + 1), self.expr(d + 1))

    def ws(self):
        return self.r.choice(["", "", "-", "+"] if self.r.random() < 0.3 else [""])

    def text(self):
        return self.r.choice(["", "x", " ", "\n", "  \n", "\n  ", " a \n b ", "\t", "\n\n"])

    def block(self, d=0):
        r = self.r
        out = []
        for _ in range(r.randrange(1, 4)):
            k = r.random()
            out.append(self.text())
            if d > 2 or k < 0.4:
                out.append("{{%s %s %s}}" % (r.choice(["", "-"]), self.expr(), r.choice(["", "-"])))
            elif k < 0.6:
                out.append("{%%%s if %s %s%%}%s%s{%%%s else %s%%}%s{%%%s endif %s%%}" % (
                    self.ws(), self.expr(), self.ws(), self.text(), self.block(d + 1), self.ws(), self.ws(),
                    self.block(d + 1), self.ws(), self.ws()))
            elif k < 0.75:
                it = r.choice(["messages", "range(3)", "[1, 2]", "'ab'", "{'a': 1, 'b': 2}", "[]", "messages if m"])
                out.append("{%%%s for m in %s %s%%}%s%s{%%%s endfor %s%%}" % (
                    self.ws(), it, self.ws(), self.text(), self.block(d + 1), self.ws(), self.ws()))
            elif k < 0.85:
                out.append("{%%%s set m = %s %s%%}" % (self.ws(), self.expr(), self.ws()))
            elif k < 0.95:
                out.append("{%%%s set ns.v = %s %s%%}" % (self.ws(), self.expr(), self.ws()))
            else:
                out.append("{#%s c %s#}" % (self.ws(), self.ws()))
            out.append(self.text())
        return "".join(out)

    def template(self):
        return "{% set ns = namespace(v=1) %}" + self.block()


def ws_template(seed):
    """Random whitespace/tag soup: text runs of spaces, tabs, newlines and
    letters between block, variable and comment tags with random - / + signs."""
    r = random.Random(seed)
    chunks = ["", " ", "  ", "\t", "\n", "\n\n", " \n ", "x", "a b", "\r\n", "\n  \t", "\u3000", "\u00a0\n"]
    sign = lambda: r.choice(["", "", "-", "+"])  # noqa: E731
    out = []
    depth = 0
    for _ in range(r.randrange(3, 14)):
        out.append(r.choice(chunks) + r.choice(chunks))
        k = r.random()
        if k < 0.25:
            out.append("{{%s 'v' %s}}" % (r.choice(["", "-"]), r.choice(["", "-"])))
        elif k < 0.45:
            out.append("{%%%s if true %s%%}" % (sign(), sign()))
            depth += 1
        elif k < 0.6 and depth:
            out.append("{%%%s endif %s%%}" % (sign(), sign()))
            depth -= 1
        elif k < 0.7:
            out.append("{#%s comment %s#}" % (sign(), sign()))
        elif k < 0.78:
            out.append("{%%%s raw %s%%}%s{{ raw }}%s{%%%s endraw %s%%}" % (  # no '+%}' after raw in jinja2
                sign(), r.choice(["", "-"]), r.choice(chunks), r.choice(chunks), sign(), sign()))
        elif k < 0.9:
            out.append("{%%%s set z = 1 %s%%}" % (sign(), sign()))
        else:
            out.append("{%%%s for i in [1, 2] %s%%}%s{{ i }}%s{%%%s endfor %s%%}" % (
                sign(), sign(), r.choice(chunks), r.choice(chunks), sign(), sign()))
    while depth:
        out.append(r.choice(chunks) + "{%% endif %s%%}" % sign())
        depth -= 1
    out.append(r.choice(chunks))
    return "".join(out)
