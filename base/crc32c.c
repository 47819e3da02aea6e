/* CRC-32C (see crc32c.h): the SSE4.2 crc32 instruction 8 bytes at a time
 * when the build targets it (-march=native on x86 does), else a byte-wise
 * table built on first use. */
#include "base/crc32c.h"

#include <string.h>

#if defined(__SSE4_2__)
#include <nmmintrin.h>

uint32_t crc32c(uint32_t crc, const void *p, size_t n) {
    const unsigned char *b = p;
    uint64_t c = ~crc;
    for (; n >= 8; n -= 8, b += 8) {
        uint64_t v;
        memcpy(&v, b, 8);
        c = _mm_crc32_u64(c, v);
    }
    uint32_t c32 = (uint32_t)c;
    for (; n; n--) c32 = _mm_crc32_u8(c32, *b++);
    return ~c32;
}
#else
#include <pthread.h>

static uint32_t table[256];
static pthread_once_t table_once = PTHREAD_ONCE_INIT;

static void table_init(void) {
    for (uint32_t i = 0; i < 256; i++) {
        uint32_t c = i;
        for (int k = 0; k < 8; k++) c = c & 1 ? (c >> 1) ^ 0x82F63B78u : c >> 1;
        table[i] = c;
    }
}

uint32_t crc32c(uint32_t crc, const void *p, size_t n) {
    pthread_once(&table_once, table_init);
    const unsigned char *b = p;
    uint32_t c = ~crc;
    while (n--) c = table[(c ^ *b++) & 0xff] ^ (c >> 8);
    return ~c;
}
#endif
