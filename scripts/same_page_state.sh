# shellcheck shell=bash
# Sourced by the benchmark scripts: same_page_state FILE... flushes each
# file, evicts it from the page cache and reads it back in one sequential
# pass, so every file a comparison reads is cached in large folios and mapped
# with 2 MiB entries. A file just written tensor by tensor (or copied in
# small pieces) is cached in small folios and mapped with 4 KiB entries,
# which costs decode 5-25% (docs/PERFORMANCE.md): without this, a benchmark
# compares page-cache states as much as models or tools. SAME_PAGE_STATE=0
# leaves the page cache as it is.
same_page_state() {
  [ "${SAME_PAGE_STATE:-1}" = 1 ] || return 0
  python3 - "$@" <<'PY'
import os, sys
for path in sys.argv[1:]:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)  # dirty pages are not evicted
        os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
    finally:
        os.close(fd)
PY
  cat "$@" > /dev/null
}
