/* libxcpipe_clock_shift.so: a wall-clock jump for one process, for fault tests.
 *
 * Preloaded (LD_PRELOAD) into a process whose environment names a file in
 * XCPIPE_CLOCK_SHIFT_FILE, it adds the signed 64-bit nanosecond count stored in the first 8 bytes
 * of that file to every reading of the wall clock (CLOCK_REALTIME and its coarse variant, and
 * gettimeofday and time, which read it). The file is mapped shared, so a test makes the clock
 * jump, forwards or back, at any moment by writing a new value; no signal, no restart.
 * Monotonic clocks are left alone: they never jump on a real host, and timeouts must be
 * measured on them. Changing the system clock instead would move it for every process on the
 * machine (builds and other tests included).
 *
 * Without the variable, or when the file cannot be mapped, it changes nothing. Thread-safe: the
 * mapping is made once (a race makes it twice, harmlessly) and read with a relaxed atomic load.
 */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec*);

static clock_gettime_fn real_clock_gettime(void) {
  static clock_gettime_fn fn;
  if (!fn) fn = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
  return fn;
}

static int64_t shift_ns(void) {
  static volatile int64_t* shared;
  static int tried;
  if (!shared && !__atomic_load_n(&tried, __ATOMIC_ACQUIRE)) {
    const char* path = getenv("XCPIPE_CLOCK_SHIFT_FILE");
    if (path && *path) {
      int fd = open(path, O_RDONLY | O_CLOEXEC);
      if (fd >= 0) {
        void* p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
        close(fd);
        if (p != MAP_FAILED) shared = (volatile int64_t*)p;
      }
    }
    __atomic_store_n(&tried, 1, __ATOMIC_RELEASE);
  }
  return shared ? __atomic_load_n(shared, __ATOMIC_RELAXED) : 0;
}

static void add_ns(struct timespec* ts, int64_t ns) {
  int64_t total = (int64_t)ts->tv_nsec + ns % 1000000000LL;
  ts->tv_sec += (time_t)(ns / 1000000000LL);
  if (total < 0) {
    total += 1000000000LL;
    ts->tv_sec -= 1;
  } else if (total >= 1000000000LL) {
    total -= 1000000000LL;
    ts->tv_sec += 1;
  }
  ts->tv_nsec = (long)total;
}

int clock_gettime(clockid_t clock, struct timespec* ts) {
  clock_gettime_fn real = real_clock_gettime();
  if (!real) return -1;
  int rc = real(clock, ts);
  if (rc == 0 && (clock == CLOCK_REALTIME || clock == CLOCK_REALTIME_COARSE)) add_ns(ts, shift_ns());
  return rc;
}

int gettimeofday(struct timeval* tv, void* tz) {
  (void)tz;
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return -1;
  /* glibc declares tv nonnull: no check. */
  tv->tv_sec = ts.tv_sec;
  tv->tv_usec = ts.tv_nsec / 1000;
  return 0;
}

time_t time(time_t* out) {
  struct timespec ts;
  if (clock_gettime(CLOCK_REALTIME, &ts) != 0) return (time_t)-1;
  if (out) *out = ts.tv_sec;
  return ts.tv_sec;
}
