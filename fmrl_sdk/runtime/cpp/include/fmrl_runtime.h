/* fmrl_runtime: the fmrl-sdk app runtime as a C library (the C counterpart of fmrl_sdk.runtime).
 *
 * Opens a bundle (docs/bundle-format.md, format_version 2) with the same checks as the Python runtime,
 * runs its ExecuTorch program one event at a time, and keeps one constant-size session per user whose
 * bytes are interchangeable with Python's `Session.to_bytes()` / `Recommender.restore()`.
 *
 *   fmrl_recommender* rec;
 *   if (fmrl_open("bundles/phone-lowmem", NULL, &rec) != FMRL_OK) puts(fmrl_last_error());
 *   fmrl_session* s; fmrl_session_new(rec, &s);
 *   fmrl_observe(rec, s, "B0030HKJ8I", NULL);
 *   const char* ids[10]; float scores[10]; size_t n = 10;
 *   fmrl_recommend(rec, s, 10, FMRL_EXCLUDE_SEEN_DEFAULT, ids, scores, NULL, &n);
 *   fmrl_session_free(s); fmrl_close(rec);
 *
 * Thread safety (as in Python): a recommender may be shared by any number of threads (program calls are
 * serialised inside it; fmrl_add_items swaps in a new immutable catalogue). A session is NOT thread-safe:
 * one session per user, never used from two threads at once. fmrl_last_error is per thread.
 *
 * Every function returning fmrl_status sets a one-line message readable with fmrl_last_error() when it
 * fails. Strings are UTF-8. Item id pointers handed out stay valid until fmrl_close.
 */
#ifndef FMRL_RUNTIME_H
#define FMRL_RUNTIME_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

#if defined(_WIN32)
#define FMRL_API __declspec(dllexport)
#else
#define FMRL_API __attribute__((visibility("default")))
#endif

typedef enum fmrl_status {
  FMRL_OK = 0,
  FMRL_ERR_ARGUMENT = 1,     /* bad argument (NULL pointer, k out of range, bad vectors...) */
  FMRL_ERR_BUNDLE = 2,       /* the bundle was refused (missing file, sha256 mismatch, bad manifest...) */
  FMRL_ERR_STATE = 3,        /* a session state was refused (corrupt, foreign bundle, truncated...) */
  FMRL_ERR_UNKNOWN_ITEM = 4, /* observe of an unknown item with on_unknown = FMRL_UNKNOWN_RAISE */
  FMRL_ERR_PROGRAM = 5,      /* ExecuTorch failed to load or run the program */
  FMRL_ERR_BUFFER = 6,       /* an output buffer is too small (the needed size is returned) */
  FMRL_ERR_INTERNAL = 7      /* out of memory or an unexpected C++ exception */
} fmrl_status;

enum { FMRL_UNKNOWN_SKIP = 0, FMRL_UNKNOWN_RAISE = 1 };
enum { FMRL_EXCLUDE_SEEN_DEFAULT = -1 };

typedef struct fmrl_recommender fmrl_recommender;
typedef struct fmrl_session fmrl_session;

typedef struct fmrl_open_options {
  int on_unknown;            /* FMRL_UNKNOWN_SKIP (count in the session's `unknown`) or FMRL_UNKNOWN_RAISE */
  int exclude_seen;          /* default of fmrl_recommend(..., FMRL_EXCLUDE_SEEN_DEFAULT, ...) */
  uint32_t bloom_bits;       /* seen filter size in bits (multiple of 8, 8..2^20); 2048 as in Python */
  uint32_t bloom_hashes;     /* hash positions per item (1..16); 4 as in Python */
  int threads;               /* ExecuTorch CPU threads, process-wide (0: keep the default, one per core);
                                resizes the pool: set it only while no other recommender is stepping */
  int check_executorch_version; /* refuse bundles exported by a newer ExecuTorch (1, the default) */
} fmrl_open_options;

/* Library version and the ExecuTorch version it was built against ("0.1.0", "1.5.1"). */
FMRL_API const char* fmrl_version(void);
FMRL_API const char* fmrl_executorch_version(void);
/* The calling thread's last error message ("" when none). */
FMRL_API const char* fmrl_last_error(void);

FMRL_API void fmrl_open_options_init(fmrl_open_options* options);
/* Verify the bundle directory (format, sha256 of every file, shapes) and load its program.
 * options may be NULL (defaults). */
FMRL_API fmrl_status fmrl_open(const char* bundle_dir, const fmrl_open_options* options, fmrl_recommender** out);
FMRL_API void fmrl_close(fmrl_recommender* rec);

FMRL_API int32_t fmrl_granularity(const fmrl_recommender* rec);   /* s */
FMRL_API int32_t fmrl_k_max(const fmrl_recommender* rec);
FMRL_API int64_t fmrl_num_items(const fmrl_recommender* rec);     /* export-time items N */
FMRL_API int64_t fmrl_item_count(const fmrl_recommender* rec);    /* N + items added so far */
FMRL_API size_t fmrl_state_bytes(const fmrl_recommender* rec);    /* size of every session's bytes */
FMRL_API void fmrl_fingerprint(const fmrl_recommender* rec, uint8_t out[16]);
/* The manifest's "profile" (or ""); valid until fmrl_close. */
FMRL_API const char* fmrl_profile(const fmrl_recommender* rec);

/* Internal index (1..N for export-time items, above N for added items) of an external id; 0 if unknown. */
FMRL_API int64_t fmrl_item_index(const fmrl_recommender* rec, const char* item_id);
/* External id of an internal index, or NULL when out of range. */
FMRL_API const char* fmrl_item_id(const fmrl_recommender* rec, int64_t index);
/* The item's vector (float32 [s]) for any known item; `out` holds at least s floats. */
FMRL_API fmrl_status fmrl_item_vector(const fmrl_recommender* rec, const char* item_id, float* out, size_t capacity);
/* Items created after export: `vectors` is row-major [count, dims] float32, dims >= s (the first s dims
 * are used). Adding an id again replaces its vector; export-time ids are refused. *new_count (may be NULL)
 * receives the number of ids that were not known before. */
FMRL_API fmrl_status fmrl_add_items(fmrl_recommender* rec, const char* const* ids, size_t count,
                                    const float* vectors, size_t dims, size_t* new_count);

/* A session is its own serialised state: fmrl_state_bytes(rec) bytes, nothing else, so a live session
 * costs exactly what a saved one does. Every call names the recommender it runs on; a session of another
 * bundle is refused (the state carries the bundle fingerprint). */
FMRL_API fmrl_status fmrl_session_new(const fmrl_recommender* rec, fmrl_session** out);
/* A session from fmrl_session_to_bytes or Python's Session.to_bytes(key=...); refuses corrupt, foreign,
 * truncated, edited or incompatible states with the same reasons as Python. key (NULL: none, else >= 16
 * bytes kept by the app) must be given exactly when the state was signed with it. */
FMRL_API fmrl_status fmrl_session_restore(const fmrl_recommender* rec, const uint8_t* data, size_t size,
                                          const uint8_t* key, size_t key_size, fmrl_session** out);
FMRL_API void fmrl_session_free(fmrl_session* session);
/* Writes fmrl_state_bytes(rec) bytes, plus a 32-byte HMAC-SHA256 tag when key is not NULL (>= 16 bytes);
 * *size receives that count (also on FMRL_ERR_BUFFER). */
FMRL_API fmrl_status fmrl_session_to_bytes(const fmrl_recommender* rec, const fmrl_session* session,
                                           const uint8_t* key, size_t key_size, uint8_t* out, size_t capacity,
                                           size_t* size);

/* Feed one interaction by external id. *advanced (may be NULL) is 1 when the state advanced,
 * 0 when the item was unknown and skipped (on_unknown = FMRL_UNKNOWN_SKIP). */
FMRL_API fmrl_status fmrl_observe(fmrl_recommender* rec, fmrl_session* session, const char* item_id,
                                  int* advanced);
/* The same by internal index (1..fmrl_item_count). */
FMRL_API fmrl_status fmrl_observe_index(fmrl_recommender* rec, fmrl_session* session, int64_t index);
/* Top-k (1 <= k <= k_max), best first: the program's top-k merged with added items, seen items removed
 * when exclude_seen is 1 (0: keep them; FMRL_EXCLUDE_SEEN_DEFAULT: the recommender's default).
 * On entry *count is the capacity of the non-NULL arrays (>= k); on return the number written (fewer
 * than k only when exclude_seen removed more than k_max - k candidates). Any array may be NULL. */
FMRL_API fmrl_status fmrl_recommend(const fmrl_recommender* rec, const fmrl_session* session, int k,
                                    int exclude_seen, const char** ids, float* scores, int64_t* indices,
                                    size_t* count);
/* The user vector after the last event (float32 [s]). */
FMRL_API fmrl_status fmrl_session_hidden(const fmrl_recommender* rec, const fmrl_session* session, float* out,
                                         size_t capacity);
/* The state's counters: events observed (every observe advances the state), unknown items skipped,
 * observed items that were added after export. Any pointer may be NULL. */
FMRL_API void fmrl_session_counters(const fmrl_session* session, uint64_t* observed, uint32_t* unknown,
                                    uint32_t* added);

#ifdef __cplusplus
}
#endif
#endif /* FMRL_RUNTIME_H */
