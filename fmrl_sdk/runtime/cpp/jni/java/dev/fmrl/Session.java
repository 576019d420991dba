package dev.fmrl;

import java.util.Objects;

/**
 * One user's session: the native {@code fmrl_session}, which is exactly its serialised state
 * ({@link Recommender#stateBytes()} bytes, interchangeable with Python's {@code Session.to_bytes()}).
 *
 * <p><b>Not thread-safe</b>: one session per user, used by one thread at a time (as in C and Python).
 * Its methods are synchronised only so that misuse (e.g. {@link #close()} racing a call) cannot touch
 * freed native memory; concurrent calls are still not meant to be made.
 *
 * <p>Close it when done (try-with-resources); {@link #close()} is idempotent and works after its
 * recommender was closed. Any other call after either was closed throws {@link IllegalStateException}.
 */
public final class Session implements AutoCloseable {
  private final Recommender rec;
  private long handle;

  Session(Recommender rec, long handle) {
    this.rec = rec;
    this.handle = handle;
  }

  private long live() {
    if (handle == 0) throw new IllegalStateException("Session is closed");
    return handle;
  }

  /** The recommender this session belongs to. */
  public Recommender recommender() {
    return rec;
  }

  /**
   * Feeds one interaction by external item id.
   *
   * @return true when the state advanced, false when the item was unknown and skipped
   * @throws IllegalArgumentException when the id contains a NUL character
   * @throws FmrlException {@link FmrlStatus#ARGUMENT} for an empty id or one over 1,024 UTF-8 bytes
   */
  public synchronized boolean observe(String itemId) throws FmrlException {
    Objects.requireNonNull(itemId, "itemId");
    long session = live();
    long r = rec.acquire();
    try {
      return Native.observe(r, session, itemId);
    } finally {
      rec.release();
    }
  }

  /** Top-k (1 &lt;= k &lt;= kMax) with the recommender's exclude_seen default (off: seen items stay). */
  public Recommendations recommend(int k) throws FmrlException {
    return recommend(k, Recommender.EXCLUDE_SEEN_DEFAULT);
  }

  /**
   * Top-k (1 &lt;= k &lt;= kMax), best first; {@code excludeSeen} removes items this session observed
   * (then fewer than k may come back when more than kMax - k candidates were seen).
   *
   * @throws FmrlException {@link FmrlStatus#ARGUMENT} when k is out of range
   */
  public Recommendations recommend(int k, boolean excludeSeen) throws FmrlException {
    return recommend(k, excludeSeen ? 1 : 0);
  }

  private synchronized Recommendations recommend(int k, int excludeSeen) throws FmrlException {
    long session = live();
    long r = rec.acquire();
    try {
      // arrays only for a k the library accepts; otherwise it refuses k before looking at them
      int capacity = k >= 1 && k <= rec.kMaxUnchecked() ? k : 0;
      String[] ids = new String[capacity];
      float[] scores = new float[capacity];
      int n = Native.recommend(r, session, k, excludeSeen, ids, scores);
      if (n != capacity) {
        ids = java.util.Arrays.copyOf(ids, n);
        scores = java.util.Arrays.copyOf(scores, n);
      }
      return new Recommendations(ids, scores);
    } finally {
      rec.release();
    }
  }

  /** Events observed so far (every observe of a known item advances the state). */
  public synchronized long observed() throws FmrlException {
    long session = live();
    rec.acquire();
    try {
      return Native.observed(session);
    } finally {
      rec.release();
    }
  }

  /** The state as bytes ({@link Recommender#stateBytes()} of them), unsigned. */
  public byte[] toBytes() throws FmrlException {
    return toBytes(null);
  }

  /**
   * The state as bytes, followed by a 32-byte HMAC-SHA256 tag when {@code key} is not null (at least 16
   * bytes, kept by the app); {@link Recommender#restore(byte[], byte[])} then needs the same key.
   */
  public synchronized byte[] toBytes(byte[] key) throws FmrlException {
    long session = live();
    long r = rec.acquire();
    try {
      return Native.toBytes(r, session, key);
    } finally {
      rec.release();
    }
  }

  /** Frees the native session; idempotent, and allowed after the recommender was closed. */
  @Override
  public synchronized void close() {
    if (handle != 0) {
      Native.sessionFree(handle);
      handle = 0;
    }
  }
}
