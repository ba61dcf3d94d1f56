/* Callgrind's instrumentation switch, for ctypes: valgrind's client requests are
   inline-assembly sequences (no-ops outside valgrind) that Python cannot issue itself.
   Instrumentation only around the counted calls makes everything else (starting
   Python and torch, building each case, warm-up calls) run several times faster. */
#include <valgrind/callgrind.h>

void cmgm_start_instrumentation(void) { CALLGRIND_START_INSTRUMENTATION; }
void cmgm_stop_instrumentation(void) { CALLGRIND_STOP_INSTRUMENTATION; }
