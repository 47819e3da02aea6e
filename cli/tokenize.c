/* engram-tokenize: encode text to ids, decode ids to text, render a chat
 * prompt through the checkpoint's chat template, or (--jsonl) encode/decode
 * many inputs, one JSON value per line, for tests and scripts.
 * Errors: one line on stderr and exit code 1; usage errors exit 2. */
#include "chat/chat_template.h"
#include "engram/engram_lookup.h"
#include "tokenizer/tokenizer.h"
#include "base/utf8.h"
#include "base/util.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_TEXT_FILE ((size_t)64 << 20)

static void usage(FILE *f) {
    fprintf(f,
            "usage: engram-tokenize --tokenizer DIR|FILE.json\n"
            "         (--text STR | --text-file F) [--no-special]   print ids as a JSON array\n"
            "         --decode 1,2,3 [--skip-special]                print the text\n"
            "         --jsonl [--no-special] [--skip-special]        stdin: one JSON string (encode)\n"
            "                                                       or id array (decode) per line;\n"
            "                                                       stdout: one JSON result per line\n"
            "         --chat FILE.json [--tools FILE.json] [--extra FILE.json] [--add-generation-prompt]\n"
            "                                                       print the prompt rendered by the\n"
            "                                                       chat template (FILE: messages array;\n"
            "                                                       --extra: object of template variables)\n"
            "         --engram-compress                              print the Engram compressed tokenizer:\n"
            "                                                       {\"vocab\": N, \"compressed\": Vc, \"lookup\": [...]}\n"
            "         --vocab                                        print one line per id: [id, token,\n"
            "                                                       decode([id]) keeping special tokens,\n"
            "                                                       the token's bytes in hex]\n"
            "                                                       (token null for holes)\n"
            "         --stream (with --decode or --jsonl)            decode incrementally: print the\n"
            "                                                       JSON array of the pieces emitted\n"
            "                                                       per id, then the final flush\n");
}

/* Appends s as a JSON string literal (UTF-8 kept, control chars escaped). */
static void json_put_string(FILE *f, const char *s, size_t n) {
    fputc('"', f);
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '"' || c == '\\') {
            fputc('\\', f);
            fputc(c, f);
        } else if (c < 0x20 || c == 0x7f)
            fprintf(f, "\\u%04x", c);
        else
            fputc(c, f);
    }
    fputc('"', f);
}

static void json_put_ids(FILE *f, const int32_t *ids, size_t n) {
    fputc('[', f);
    for (size_t i = 0; i < n; i++) fprintf(f, i ? ",%d" : "%d", ids[i]);
    fputc(']', f);
}

static int hexval(int c) {
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* UTF-8 of cp (<= U+10FFFF); a lone surrogate, which base's utf8_encode
 * refuses, gets its 3-byte (ill-formed) form so that encode rejects it. */
static int put_utf8(char *o, unsigned cp) {
    int m = utf8_encode((int32_t)cp, o);
    if (m) return m;
    o[0] = (char)(0xE0 | cp >> 12);
    o[1] = (char)(0x80 | ((cp >> 6) & 63));
    o[2] = (char)(0x80 | (cp & 63));
    return 3;
}

/* Parses a JSON string literal at s (NUL bytes kept, unlike cJSON). Lone
 * surrogate escapes become the 3-byte (ill-formed) encoding, which encode
 * then rejects. Returns the decoded bytes (heap) or NULL. */
static char *json_get_string(const char *s, size_t n, size_t *out_len) {
    size_t i = 0;
    while (i < n && (s[i] == ' ' || s[i] == '\t')) i++;
    if (i >= n || s[i] != '"') return NULL;
    i++;
    char *o = malloc(n + 1);
    if (!o) return NULL;
    size_t k = 0;
    while (i < n && s[i] != '"') {
        if (s[i] != '\\') {
            o[k++] = s[i++];
            continue;
        }
        if (++i >= n) break;
        char c = s[i++];
        switch (c) {
        case 'n': o[k++] = '\n'; break;
        case 't': o[k++] = '\t'; break;
        case 'r': o[k++] = '\r'; break;
        case 'b': o[k++] = '\b'; break;
        case 'f': o[k++] = '\f'; break;
        case '/': case '\\': case '"': o[k++] = c; break;
        case 'u': {
            unsigned cp = 0;
            for (int j = 0; j < 4; j++) {
                int h = i < n ? hexval((unsigned char)s[i++]) : -1;
                if (h < 0) { free(o); return NULL; }
                cp = cp * 16 + (unsigned)h;
            }
            if (cp >= 0xD800 && cp < 0xDC00 && i + 6 <= n && s[i] == '\\' && s[i + 1] == 'u') {
                unsigned lo = 0;
                int ok = 1;
                for (int j = 0; j < 4; j++) {
                    int h = hexval((unsigned char)s[i + 2 + j]);
                    if (h < 0) ok = 0;
                    lo = lo * 16 + (unsigned)(h < 0 ? 0 : h);
                }
                if (ok && lo >= 0xDC00 && lo < 0xE000) {
                    cp = 0x10000 + ((cp - 0xD800) << 10) + (lo - 0xDC00);
                    i += 6;
                }
            }
            k += (size_t)put_utf8(o + k, cp);
            break;
        }
        default: free(o); return NULL;
        }
    }
    if (i >= n) { free(o); return NULL; }
    *out_len = k;
    return o;
}

/* Parses "1,2,3" or "[1, 2, 3]" into ids. Returns -1 on a bad number. */
static int parse_ids(const char *s, int32_t **ids, size_t *n) {
    size_t cap = 16;
    *n = 0;
    *ids = malloc(cap * sizeof **ids);
    if (!*ids) return -1;
    while (*s) {
        while (*s == ' ' || *s == ',' || *s == '[' || *s == ']' || *s == '\t' || *s == '\n' || *s == '\r') s++;
        if (!*s) break;
        char *end;
        errno = 0;
        long v = strtol(s, &end, 10);
        if (end == s || errno || v < INT32_MIN || v > INT32_MAX) return -1;
        if (*n == cap) {
            cap *= 2;
            int32_t *p = realloc(*ids, cap * sizeof *p);
            if (!p) return -1;
            *ids = p;
        }
        (*ids)[(*n)++] = (int32_t)v;
        s = end;
    }
    return 0;
}

/* Decodes ids one at a time with a tokenizer_stream and prints the JSON
 * array of the pieces (one per id, then the flush). */
static int print_stream(const tokenizer *t, const int32_t *ids, size_t n, bool skip_special) {
    tokenizer_stream *s;
    int rc = tokenizer_stream_create(t, skip_special, &s);
    if (rc) return rc;
    fputc('[', stdout);
    for (size_t i = 0; i <= n && !rc; i++) {
        char *piece;
        size_t len;
        rc = i < n ? tokenizer_stream_step(s, ids[i], &piece, &len)
                   : tokenizer_stream_flush(s, &piece, &len);
        if (rc) break;
        if (i) fputc(',', stdout);
        json_put_string(stdout, piece, len);
        free(piece);
    }
    fputc(']', stdout);
    tokenizer_stream_destroy(s);
    return rc;
}

static int run_jsonl(const tokenizer *t, bool add_special, bool skip_special, bool stream) {
    char *line = NULL;
    size_t cap = 0;
    ssize_t got;
    int rc = 0;
    while ((got = getline(&line, &cap, stdin)) > 0) {
        size_t n = (size_t)got;
        while (n && (line[n - 1] == '\n' || line[n - 1] == '\r')) n--;
        size_t i = 0;
        while (i < n && (line[i] == ' ' || line[i] == '\t')) i++;
        if (i < n && line[i] == '[') {
            line[n] = 0;
            int32_t *ids;
            size_t k;
            char *text;
            size_t len;
            if (parse_ids(line + i, &ids, &k)) {
                printf("{\"error\":\"bad id list\"}\n");
            } else if (stream) {
                if ((rc = print_stream(t, ids, k, skip_special))) printf("{\"error\":\"%s\"}", tokenizer_status_str(rc));
                fputc('\n', stdout);
            } else if ((rc = tokenizer_decode(t, ids, k, skip_special, &text, &len))) {
                printf("{\"error\":\"%s\"}\n", tokenizer_status_str(rc));
            } else {
                json_put_string(stdout, text, len);
                fputc('\n', stdout);
                free(text);
            }
            free(ids);
            continue;
        }
        size_t len;
        char *text = json_get_string(line, n, &len);
        if (!text) {
            printf("{\"error\":\"line is neither a JSON string nor an id array\"}\n");
            continue;
        }
        int32_t *ids;
        size_t k;
        int r = tokenizer_encode(t, text, len, add_special, &ids, &k);
        if (r) printf("{\"error\":\"%s\"}\n", tokenizer_status_str(r));
        else {
            json_put_ids(stdout, ids, k);
            fputc('\n', stdout);
            free(ids);
        }
        free(text);
    }
    free(line);
    return fflush(stdout) ? 1 : 0;
}

/* Renders the chat template of the checkpoint dir (or of the directory
 * holding a tokenizer.json path) over the messages of chat_file; writes the
 * prompt exactly, without a trailing newline. */
static int run_chat(const char *tok_path, const char *chat_file, const char *tools_file,
                    const char *extra_file, bool agp) {
    char err[512], dir[4096];
    snprintf(dir, sizeof dir, "%s", tok_path);
    size_t dl = strlen(dir);
    if (dl > 5 && !strcmp(dir + dl - 5, ".json")) { /* a tokenizer.json path: use its folder */
        char *slash = strrchr(dir, '/');
        if (slash) *slash = 0;
        else snprintf(dir, sizeof dir, ".");
    }
    size_t len;
    char *msgs = util_read_file(chat_file, MAX_TEXT_FILE, &len, err, sizeof err);
    if (!msgs) {
        fprintf(stderr, "engram-tokenize: %s\n", err);
        return 1;
    }
    char *tools = NULL, *extra = NULL;
    if ((tools_file && !(tools = util_read_file(tools_file, MAX_TEXT_FILE, &len, err, sizeof err))) ||
        (extra_file && !(extra = util_read_file(extra_file, MAX_TEXT_FILE, &len, err, sizeof err)))) {
        fprintf(stderr, "engram-tokenize: %s\n", err);
        free(msgs);
        free(tools);
        return 1;
    }
    chat_template *ct = NULL;
    int rc = chat_template_load_dir(dir, &ct, err, sizeof err);
    char *out = NULL;
    size_t out_len = 0;
    if (!rc) rc = chat_template_render_json(ct, msgs, tools, extra, agp, &out, &out_len, err, sizeof err);
    if (rc) fprintf(stderr, "engram-tokenize: chat template: %s\n", err);
    else fwrite(out, 1, out_len, stdout);
    free(out);
    free(msgs);
    free(tools);
    free(extra);
    chat_template_destroy(ct);
    return rc ? 1 : 0;
}

/* One JSON line per id: [id, raw token or null, decode([id]) with special
 * tokens kept (what the Engram compressed tokenizer consumes), the token's
 * bytes in hex (tokenizer_token_bytes: logprobs' "bytes")]. */
static int run_vocab(const tokenizer *t) {
    size_t n = tokenizer_vocab_size(t);
    for (size_t i = 0; i < n; i++) {
        int32_t id = (int32_t)i;
        size_t tl, dl;
        const char *tok = tokenizer_id_to_token(t, id, &tl);
        char *dec;
        int rc = tokenizer_decode(t, &id, 1, false, &dec, &dl);
        if (rc) {
            fprintf(stderr, "engram-tokenize: decode: %s\n", tokenizer_status_str(rc));
            return 1;
        }
        printf("[%d,", id);
        if (tok) json_put_string(stdout, tok, tl);
        else fputs("null", stdout);
        fputc(',', stdout);
        json_put_string(stdout, dec, dl);
        free(dec);
        char *raw;
        size_t rl;
        if ((rc = tokenizer_token_bytes(t, id, &raw, &rl))) {
            fprintf(stderr, "engram-tokenize: token bytes: %s\n", tokenizer_status_str(rc));
            return 1;
        }
        fputs(",\"", stdout);
        for (size_t k = 0; k < rl; k++) printf("%02x", (unsigned char)raw[k]);
        fputs("\"]\n", stdout);
        free(raw);
    }
    return fflush(stdout) ? 1 : 0;
}

/* --engram-compress: the Engram compressed tokenizer as one JSON object. */
static int run_compress(const tokenizer *t) {
    char err[512];
    int64_t *lookup, n, vc;
    if (engram_lookup_build(t, &lookup, &n, &vc, err, sizeof err)) {
        fprintf(stderr, "engram-tokenize: %s\n", err);
        return 1;
    }
    printf("{\"vocab\": %lld, \"compressed\": %lld, \"lookup\": [", (long long)n, (long long)vc);
    for (int64_t i = 0; i < n; i++) printf("%s%lld", i ? ", " : "", (long long)lookup[i]);
    printf("]}\n");
    free(lookup);
    return 0;
}

/* --decode LIST: the text, or with --stream the pieces (print_stream).
 * Returns the exit status (2 for a bad id list). */
static int run_decode(const tokenizer *t, const char *list, bool skip_special, bool stream) {
    int32_t *ids;
    size_t n;
    if (parse_ids(list, &ids, &n)) {
        fprintf(stderr, "engram-tokenize: --decode: bad id list\n");
        free(ids);
        return 2;
    }
    char *out = NULL;
    size_t len;
    int rc;
    if (stream) {
        rc = print_stream(t, ids, n, skip_special);
        fputc('\n', stdout);
    } else
        rc = tokenizer_decode(t, ids, n, skip_special, &out, &len);
    free(ids);
    if (rc) {
        fprintf(stderr, "engram-tokenize: decode: %s\n", tokenizer_status_str(rc));
        return 1;
    }
    if (!stream) {
        fwrite(out, 1, len, stdout);
        fputc('\n', stdout);
        free(out);
    }
    return 0;
}

/* --text STR or --text-file F: the ids as a JSON array. */
static int run_encode(const tokenizer *t, const char *text, const char *text_file, bool add_special) {
    size_t len = 0;
    char *buf = NULL;
    if (text_file) {
        char err[512];
        buf = util_read_file(text_file, MAX_TEXT_FILE, &len, err, sizeof err);
        if (!buf) {
            fprintf(stderr, "engram-tokenize: %s\n", err);
            return 1;
        }
    }
    int32_t *ids;
    size_t n;
    int rc = tokenizer_encode(t, buf ? buf : text, buf ? len : strlen(text), add_special, &ids, &n);
    free(buf);
    if (rc) {
        fprintf(stderr, "engram-tokenize: encode: %s\n", tokenizer_status_str(rc));
        return 1;
    }
    json_put_ids(stdout, ids, n);
    fputc('\n', stdout);
    free(ids);
    return 0;
}

int main(int argc, char **argv) {
    const char *dir = NULL, *text = NULL, *text_file = NULL, *decode = NULL, *chat = NULL, *tools = NULL,
               *extra = NULL;
    bool agp = false;
    bool add_special = true, skip_special = false, jsonl = false, stream = false, vocab = false,
         compress = false;
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        bool has_val = i + 1 < argc;
        if (!strcmp(a, "--tokenizer") && has_val) dir = argv[++i];
        else if (!strcmp(a, "--text") && has_val) text = argv[++i];
        else if (!strcmp(a, "--text-file") && has_val) text_file = argv[++i];
        else if (!strcmp(a, "--decode") && has_val) decode = argv[++i];
        else if (!strcmp(a, "--no-special")) add_special = false;
        else if (!strcmp(a, "--skip-special")) skip_special = true;
        else if (!strcmp(a, "--jsonl")) jsonl = true;
        else if (!strcmp(a, "--stream")) stream = true;
        else if (!strcmp(a, "--vocab")) vocab = true;
        else if (!strcmp(a, "--engram-compress")) compress = true;
        else if (!strcmp(a, "--chat") && has_val) chat = argv[++i];
        else if (!strcmp(a, "--tools") && has_val) tools = argv[++i];
        else if (!strcmp(a, "--extra") && has_val) extra = argv[++i];
        else if (!strcmp(a, "--add-generation-prompt")) agp = true;
        else if (!strcmp(a, "--help") || !strcmp(a, "-h")) {
            usage(stdout);
            return 0;
        } else {
            fprintf(stderr, "engram-tokenize: unknown or incomplete argument '%s'\n", a);
            usage(stderr);
            return 2;
        }
    }
    int modes = (text != NULL) + (text_file != NULL) + (decode != NULL) + jsonl + (chat != NULL) + vocab + compress;
    if (!dir || modes != 1) {
        fprintf(stderr, "engram-tokenize: need --tokenizer and exactly one of --text, --text-file, --decode, --jsonl, --chat, --vocab, --engram-compress\n");
        usage(stderr);
        return 2;
    }
    if (chat) return run_chat(dir, chat, tools, extra, agp);
    char err[512];
    tokenizer *t;
    int rc = tokenizer_load(dir, &t, err, sizeof err);
    if (rc) {
        fprintf(stderr, "engram-tokenize: %s\n", err);
        return 1;
    }
    int status;
    if (compress) status = run_compress(t);
    else if (vocab) status = run_vocab(t);
    else if (jsonl) status = run_jsonl(t, add_special, skip_special, stream);
    else if (decode) status = run_decode(t, decode, skip_special, stream);
    else status = run_encode(t, text, text_file, add_special);
    tokenizer_destroy(t);
    return status;
}
