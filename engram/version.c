/* Version string of the engram library (keeps the library non-empty until the
 * hashing module lands). */
#include "engram/engram.h"

const char *engram_version(void) { return ENGRAM_VERSION_STRING; }
