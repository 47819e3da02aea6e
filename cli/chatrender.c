/* engram-chatrender: renders a chat template to stdout, for tests and for
 * checking a checkpoint's template by hand. The template comes from a
 * checkpoint directory (--template-dir) or a raw Jinja file (--template).
 * Errors are one line on stderr and exit status 1. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chat/chat_template.h"
#include "base/util.h"

static void usage(void) {
    fprintf(stderr,
            "usage: engram-chatrender (--template-dir DIR | --template FILE.jinja [--bos S] [--eos S])\n"
            "                         --messages FILE.json [--tools FILE.json] [--extra FILE.json]\n"
            "                         [--add-generation-prompt]\n");
}

static char *slurp(const char *path) {
    char err[256];
    size_t len;
    char *s = util_read_file(path, (size_t)256 << 20, &len, err, sizeof err);
    if (!s) fprintf(stderr, "error: %s\n", err);
    return s;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *tpl = NULL, *msgs = NULL, *tools = NULL, *extra = NULL, *bos = NULL, *eos = NULL;
    bool agp = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char **dst = NULL;
        if (!strcmp(a, "--template-dir")) dst = &dir;
        else if (!strcmp(a, "--template")) dst = &tpl;
        else if (!strcmp(a, "--messages")) dst = &msgs;
        else if (!strcmp(a, "--tools")) dst = &tools;
        else if (!strcmp(a, "--extra")) dst = &extra;
        else if (!strcmp(a, "--bos")) dst = &bos;
        else if (!strcmp(a, "--eos")) dst = &eos;
        else if (!strcmp(a, "--add-generation-prompt")) {
            agp = true;
            continue;
        } else {
            usage();
            return 1;
        }
        if (i + 1 >= argc) {
            usage();
            return 1;
        }
        *dst = argv[++i];
    }
    if ((!dir) == (!tpl) || !msgs) {
        usage();
        return 1;
    }
    char err[512] = "";
    chat_template *t = NULL;
    int st;
    if (dir)
        st = chat_template_load_dir(dir, &t, err, sizeof err);
    else {
        char *src = slurp(tpl);
        if (!src) return 1;
        st = chat_template_create(src, bos, eos, &t, err, sizeof err);
        free(src);
    }
    if (st) {
        fprintf(stderr, "error: %s: %s\n", chat_template_status_str(st), err);
        return 1;
    }
    char *m = slurp(msgs), *tl = tools ? slurp(tools) : NULL, *ex = extra ? slurp(extra) : NULL;
    int rc = 1;
    if (m && (!tools || tl) && (!extra || ex)) {
        char *out = NULL;
        size_t out_len = 0;
        st = chat_template_render_json(t, m, tl, ex, agp, &out, &out_len, err, sizeof err);
        if (st) {
            fprintf(stderr, "error: %s: %s\n", chat_template_status_str(st), err);
        } else {
            fwrite(out, 1, out_len, stdout);
            rc = fflush(stdout) == 0 ? 0 : 1;
            free(out);
        }
    }
    free(m);
    free(tl);
    free(ex);
    chat_template_destroy(t);
    return rc;
}
