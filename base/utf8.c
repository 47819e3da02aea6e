/* UTF-8 validation, decoding and encoding (see utf8.h). */
#include "base/utf8.h"

/* The range of the byte after lead byte c and the sequence length, per
 * Unicode table 3-7; length 0 for a byte that cannot start a sequence. */
static size_t lead(uint8_t c, uint8_t *lo, uint8_t *hi) {
    *lo = 0x80, *hi = 0xBF;
    if (c >= 0xC2 && c <= 0xDF) return 2;
    if (c == 0xE0) return *lo = 0xA0, 3;
    if (c >= 0xE1 && c <= 0xEC) return 3;
    if (c == 0xED) return *hi = 0x9F, 3;
    if (c >= 0xEE && c <= 0xEF) return 3;
    if (c == 0xF0) return *lo = 0x90, 4;
    if (c >= 0xF1 && c <= 0xF3) return 4;
    if (c == 0xF4) return *hi = 0x8F, 4;
    return 0;
}

size_t utf8_decode(const uint8_t *s, size_t n, int32_t *cp) {
    if (n == 0) return 0;
    uint8_t c = s[0], lo, hi;
    if (c < 0x80) {
        *cp = c;
        return 1;
    }
    size_t len = lead(c, &lo, &hi);
    if (!len || n < len || s[1] < lo || s[1] > hi) return 0;
    for (size_t i = 2; i < len; i++)
        if ((s[i] & 0xC0) != 0x80) return 0;
    int32_t v = c & (len == 2 ? 0x1F : len == 3 ? 0x0F : 0x07);
    for (size_t i = 1; i < len; i++) v = (v << 6) | (s[i] & 0x3F);
    *cp = v;
    return len;
}

size_t utf8_bad_prefix(const uint8_t *s, size_t n, bool *incomplete) {
    uint8_t lo, hi;
    size_t len = lead(s[0], &lo, &hi), i = 1;
    *incomplete = false;
    if (!len) return 1;
    if (i < n && s[i] >= lo && s[i] <= hi) {
        i++;
        while (i < len && i < n && (s[i] & 0xC0) == 0x80) i++;
    }
    if (i == n && i < len) *incomplete = true;
    return i;
}

bool utf8_valid(const char *s, size_t n) {
    const uint8_t *u = (const uint8_t *)s;
    size_t i = 0;
    while (i < n) {
        if (u[i] < 0x80) {
            i++;
            continue;
        }
        int32_t cp;
        size_t k = utf8_decode(u + i, n - i, &cp);
        if (!k) return false;
        i += k;
    }
    return true;
}

int utf8_encode(int32_t cp, char *out) {
    unsigned char *o = (unsigned char *)out;
    if (cp < 0 || cp > 0x10FFFF || (cp >= 0xD800 && cp <= 0xDFFF)) return 0;
    if (cp < 0x80) return o[0] = (unsigned char)cp, 1;
    if (cp < 0x800) {
        o[0] = (unsigned char)(0xC0 | cp >> 6);
        o[1] = (unsigned char)(0x80 | (cp & 0x3F));
        return 2;
    }
    if (cp < 0x10000) {
        o[0] = (unsigned char)(0xE0 | cp >> 12);
        o[1] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
        o[2] = (unsigned char)(0x80 | (cp & 0x3F));
        return 3;
    }
    o[0] = (unsigned char)(0xF0 | cp >> 18);
    o[1] = (unsigned char)(0x80 | (cp >> 12 & 0x3F));
    o[2] = (unsigned char)(0x80 | (cp >> 6 & 0x3F));
    o[3] = (unsigned char)(0x80 | (cp & 0x3F));
    return 4;
}
