/* Character-level helpers every stage shares: Rust's char classes (through
 * utf8proc's tables), the lossy UTF-8 conversion that decode ends with, and
 * the GPT-2 byte-level alphabet of ByteLevel pre-tokenizers and decoders.
 * Decoding and validation themselves are base/utf8.h's. */
#include "tokenizer/tokenizer_internal.h"

#include "base/utf8.h"

#include <utf8proc.h>

int tok__utf8_lossy_add(strbuf *b, const char *s, size_t n, bool keep_tail, size_t *tail) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0, run = 0;
    if (tail) *tail = 0;
    while (i < n) {
        int32_t cp;
        size_t k = u[i] < 0x80 ? 1 : utf8_decode(u + i, n - i, &cp);
        if (k) {
            i += k;
            continue;
        }
        if (strbuf_add(b, s + run, i - run)) return -1;
        bool inc;
        size_t bad = utf8_bad_prefix(u + i, n - i, &inc);
        if (inc && keep_tail) {
            *tail = n - i;
            return 0;
        }
        if (strbuf_add(b, "\xEF\xBF\xBD", 3)) return -1;
        i += bad;
        run = i;
    }
    return strbuf_add(b, s + run, i - run);
}

bool tok__cp_is_whitespace(int32_t c) {
    return (c >= 9 && c <= 13) || c == 0x20 || c == 0x85 || c == 0xA0 || c == 0x1680 ||
           (c >= 0x2000 && c <= 0x200A) || c == 0x2028 || c == 0x2029 || c == 0x202F ||
           c == 0x205F || c == 0x3000;
}

bool tok__cp_is_numeric(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return k == UTF8PROC_CATEGORY_ND || k == UTF8PROC_CATEGORY_NL || k == UTF8PROC_CATEGORY_NO;
}

bool tok__cp_is_alnum(int32_t c) {
    utf8proc_category_t k = utf8proc_category(c);
    return (k >= UTF8PROC_CATEGORY_LU && k <= UTF8PROC_CATEGORY_LO) || tok__cp_is_numeric(c);
}

int32_t tok__utf8_last_cp(const char *s, size_t end, size_t *start) {
    size_t i = end - 1;
    while (i > 0 && ((uint8_t)s[i] & 0xC0) == 0x80) i--;
    int32_t cp = 0;
    utf8_decode((const uint8_t *)s + i, end - i, &cp);
    if (start) *start = i;
    return cp;
}

int32_t tok__bl_byte_to_cp[256];
int16_t tok__bl_cp_to_byte[512];

static void bl_init_once(void) {
    int n = 0;
    for (int i = 0; i < 512; i++) tok__bl_cp_to_byte[i] = -1;
    for (int b = 0; b < 256; b++) {
        bool keep = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || (b >= 174 && b <= 255);
        int32_t cp = keep ? b : 256 + n++;
        tok__bl_byte_to_cp[b] = cp;
        tok__bl_cp_to_byte[cp] = (int16_t)b;
    }
}

void tok__bl_init(void) {
    static pthread_once_t once = PTHREAD_ONCE_INIT;
    pthread_once(&once, bl_init_once);
}
