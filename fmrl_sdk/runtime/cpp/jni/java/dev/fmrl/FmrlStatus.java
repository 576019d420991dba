package dev.fmrl;

/** The C library's {@code fmrl_status} codes (include/fmrl_runtime.h), as carried by {@link FmrlException}. */
public enum FmrlStatus {
  /** FMRL_OK: success (never carried by an exception). */
  OK(0),
  /** FMRL_ERR_ARGUMENT: a bad argument (k out of range, a key shorter than 16 bytes, bad vectors...). */
  ARGUMENT(1),
  /** FMRL_ERR_BUNDLE: the bundle was refused (missing file, sha256 mismatch, bad manifest...). */
  BUNDLE(2),
  /** FMRL_ERR_STATE: a session state was refused (corrupt, foreign bundle, truncated, bad signature...). */
  STATE(3),
  /** FMRL_ERR_UNKNOWN_ITEM: an item id the recommender does not know (e.g. {@code itemVector}). */
  UNKNOWN_ITEM(4),
  /** FMRL_ERR_PROGRAM: ExecuTorch failed to load or run the program. */
  PROGRAM(5),
  /** FMRL_ERR_BUFFER: an output buffer was too small (the binding sizes its buffers; not expected). */
  BUFFER(6),
  /** FMRL_ERR_INTERNAL: out of memory or an unexpected C++ exception inside the library. */
  INTERNAL(7),
  /** A code this binding does not know (a newer library); {@link FmrlException#code()} has the number. */
  UNKNOWN(-1);

  private final int code;

  FmrlStatus(int code) {
    this.code = code;
  }

  /** The numeric {@code fmrl_status} value ({@code -1} for {@link #UNKNOWN}). */
  public int code() {
    return code;
  }

  /** The status of a numeric code; {@link #UNKNOWN} for codes this binding does not know. */
  public static FmrlStatus of(int code) {
    for (FmrlStatus status : values()) {
      if (status.code == code && status != UNKNOWN) return status;
    }
    return UNKNOWN;
  }
}
