#!/usr/bin/env bash
# Every *_avx2.cpp / *_avx512.cpp object must define no weak (COMDAT) function. An inline function
# or template instantiated there is compiled with that ISA's flags; the linker keeps one copy of
# each weak symbol for the whole program, so such a copy could be the one a scalar or AVX2 path
# calls, and fault with SIGILL on a CPU without that ISA.  Usage: check_isa_objects.sh BUILD_DIR
set -euo pipefail
build=${1:?build folder}
objects=$(find "$build" -name '*_avx2.cpp.o' -o -name '*_avx512.cpp.o')
[ -n "$objects" ] || { echo "check_isa_objects: no ISA objects under $build" >&2; exit 1; }
bad=0
for o in $objects; do
  # W: weak function/object; DW.ref.__gxx_personality_v0 is the EH personality pointer (data).
  weak=$(nm -C --defined-only "$o" | awk '$2 == "W" || $2 == "V"' | grep -v 'DW.ref.__gxx_personality_v0' || true)
  if [ -n "$weak" ]; then
    echo "$o defines weak symbols compiled with ISA flags:" >&2
    echo "$weak" | sed 's/^/  /' >&2
    bad=1
  fi
done
[ "$bad" -eq 0 ] && echo "check_isa_objects: $(echo "$objects" | wc -l) ISA objects, no weak functions"
exit "$bad"
