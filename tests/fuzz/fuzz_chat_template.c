/* libFuzzer target: compiles arbitrary bytes as a chat template and renders
 * it against a fixed small conversation with tools, under tight limits so
 * each input finishes fast. Any crash, leak or sanitizer report is a bug. */
#include <cjson/cJSON.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat_template.h"

static const char *MSGS =
    "[{\"role\":\"system\",\"content\":\"Be brief.\"},"
    "{\"role\":\"user\",\"content\":\"Hi \\\"there\\\" é 👋\"},"
    "{\"role\":\"assistant\",\"content\":\"<think>\\nhm\\n</think>\\n\\nHello\",\"reasoning_content\":null,"
    "\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"arguments\":{\"a\":1,\"b\":[true,null,2.5]}}}]},"
    "{\"role\":\"tool\",\"content\":\"42\"},"
    "{\"role\":\"assistant\",\"content\":null,\"tool_calls\":[{\"type\":\"function\",\"function\":{\"name\":\"g\",\"arguments\":\"{}\"}}]},"
    "{\"role\":\"user\",\"content\":[{\"type\":\"text\",\"text\":\"parts\"}]}]";
static const char *TOOLS = "[{\"type\":\"function\",\"function\":{\"name\":\"f\",\"description\":\"d\","
                           "\"parameters\":{\"type\":\"object\",\"properties\":{\"a\":{\"type\":\"integer\"}}}}}]";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    static cJSON *msgs, *tools;
    if (!msgs && (!(msgs = cJSON_Parse(MSGS)) || !(tools = cJSON_Parse(TOOLS)))) abort();
    if (size > (1u << 16)) return 0;
    char *src = malloc(size + 1);
    if (!src) return 0;
    memcpy(src, data, size);
    src[size] = 0;
    chat_template *t = NULL;
    char err[256];
    if (chat_template_create(src, "<s>", "</s>", &t, err, sizeof err) == 0) {
        chat_template_limits lim;
        chat_template_default_limits(&lim);
        lim.max_steps = 200000;
        lim.max_output_bytes = 1u << 20;
        lim.max_memory_bytes = 64u << 20;
        chat_template_set_limits(t, &lim);
        char *out = NULL;
        if (chat_template_render(t, msgs, (size & 1) ? tools : NULL, size & 2, &out, err, sizeof err) == 0) free(out);
        chat_template_destroy(t);
    }
    free(src);
    return 0;
}
