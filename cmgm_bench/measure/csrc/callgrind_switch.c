/* Callgrind's instrumentation switch, for ctypes: valgrind's client requests are
   inline-assembly sequences (no-ops outside valgrind) that Python cannot issue itself.
   Instrumentation off until the first counted call makes starting Python and torch
   under valgrind about three times cheaper. */
#include <valgrind/callgrind.h>

void cmgm_start_instrumentation(void) { CALLGRIND_START_INSTRUMENTATION; }
