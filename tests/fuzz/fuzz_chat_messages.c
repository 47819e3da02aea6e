/* libFuzzer target: arbitrary bytes as the messages JSON (and, split at the
 * first NUL, the tools JSON) rendered by a fixed template that walks every
 * field like real chat templates do. Exercises the JSON reader, the cJSON
 * tree reader (when cJSON parses the bytes too), value semantics and
 * tojson; any crash or sanitizer report is a bug. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat_template.h"

static const char *TEMPLATE =
    "{%- set ns = namespace(n=0) -%}"
    "{%- if tools %}{{ tools|tojson }}{% for t in tools %}{{ t.function.name }}{% endfor %}{% endif -%}"
    "{%- for m in messages -%}"
    "{%- set ns.n = ns.n + 1 -%}"
    "<{{ m.role if m is mapping else m }}>"
    "{%- if m is mapping and m.content is string -%}{{ m.content|trim }}{{ m.content.split('</think>')[-1] }}"
    "{%- elif m is mapping and m.content is iterable -%}{% for p in m.content %}{{ p.text if p is mapping else p }}{% endfor %}"
    "{%- endif -%}"
    "{%- if m is mapping and m.tool_calls %}{% for c in m.tool_calls %}{{ c.function|tojson(indent=1, sort_keys=true) }}{% endfor %}{% endif -%}"
    "{{ m|string|length }}{{ m == messages[0] }}"
    "{%- endfor -%}{{ ns.n }}{{ messages|tojson|length }}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static chat_template *t;
    char err[256];
    if (!t) {
        if (chat_template_create(TEMPLATE, "<s>", "</s>", &t, err, sizeof err) != 0) abort();
        chat_template_limits lim;
        chat_template_default_limits(&lim);
        lim.max_steps = 200000;
        lim.max_output_bytes = 1u << 20;
        lim.max_memory_bytes = 64u << 20;
        chat_template_set_limits(t, &lim);
    }
    if (size > (1u << 16)) return 0;
    char *buf = malloc(size + 2);
    if (!buf) return 0;
    memcpy(buf, data, size);
    buf[size] = 0;
    buf[size + 1] = 0;
    size_t n1 = strlen(buf);
    const char *tools = n1 < size ? buf + n1 + 1 : NULL;
    char *out = NULL;
    if (chat_template_render_json(t, buf, tools, NULL, size & 1, &out, NULL, err, sizeof err) == 0) free(out);
    cJSON *mt = cJSON_Parse(buf), *tt = tools ? cJSON_Parse(tools) : NULL;
    out = NULL;
    if (mt && chat_template_render(t, mt, tt, size & 1, &out, err, sizeof err) == 0) free(out);
    cJSON_Delete(mt);
    cJSON_Delete(tt);
    free(buf);
    return 0;
}
