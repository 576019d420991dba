package dev.fmrl;

/**
 * A call into the fmrl runtime failed: the one checked exception of this API. {@link #code()} is the C
 * library's {@code fmrl_status} value, {@link #status()} the same as an enum, and the message is the
 * library's {@code fmrl_last_error()} text for that call (the same text the Python runtime raises, e.g.
 * "session state: crc32 mismatch (corrupt or truncated)").
 *
 * <p>Misuse of the Java objects themselves is not an FmrlException: a call on a closed {@link Recommender}
 * or {@link Session} throws {@link IllegalStateException}, a null argument {@link NullPointerException}.
 */
public class FmrlException extends Exception {
  private static final long serialVersionUID = 1L;

  private final int code;

  /** Created by the native library (and usable by apps' tests): {@code code} is an fmrl_status value. */
  public FmrlException(int code, String message) {
    super(message);
    this.code = code;
  }

  /** The numeric {@code fmrl_status}. */
  public int code() {
    return code;
  }

  /** The status as an enum ({@link FmrlStatus#UNKNOWN} for a code this binding does not know). */
  public FmrlStatus status() {
    return FmrlStatus.of(code);
  }
}
