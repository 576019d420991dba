package dev.fmrl;

import java.nio.ByteBuffer;
import java.util.Objects;
import java.util.concurrent.locks.ReentrantReadWriteLock;

/**
 * An opened, verified fmrl bundle: the Java face of the C library's {@code fmrl_recommender}
 * (fmrl_sdk/runtime/cpp/include/fmrl_runtime.h), with the Python runtime's behaviour and messages.
 *
 * <pre>{@code
 * try (Recommender rec = Recommender.open("/data/.../bundles/phone-lowmem");
 *      Session session = rec.newSession()) {
 *   session.observe("B0030HKJ8I");
 *   Recommendations top = session.recommend(10);
 *   byte[] saved = session.toBytes();          // restore later with rec.restore(saved)
 * }
 * }</pre>
 *
 * <p><b>Threads.</b> A Recommender may be shared by any number of threads (the library serialises program
 * calls; {@link #addItems} swaps in a new catalogue). A {@link Session} is not thread-safe: one session per
 * user, used by one thread at a time.
 *
 * <p><b>Lifetime.</b> {@link #close()} frees the native recommender; it waits for calls in flight on
 * other threads, is idempotent, and afterwards every method (and every method of its sessions, except
 * {@link Session#close()}) throws {@link IllegalStateException}. Sessions are separate native objects:
 * close each one (try-with-resources); a session left open after its recommender closed can still be,
 * and should be, closed. Nothing is freed by the garbage collector: an unclosed Recommender or Session
 * keeps its native memory until the process ends.
 */
public final class Recommender implements AutoCloseable {
  /** {@link Session#recommend(int, boolean)}'s default: the recommender's exclude_seen (off). */
  static final int EXCLUDE_SEEN_DEFAULT = -1;

  private final ReentrantReadWriteLock lock = new ReentrantReadWriteLock();
  private long handle; // guarded by lock: read under the read lock, cleared under the write lock
  private final int granularity;
  private final int kMax;
  private final long numItems;
  private final int stateBytes;
  private long ownedBuffer; // the native copy of open(byte[])'s bundle, freed after the recommender
  private Object keepAlive; // open(ByteBuffer)'s direct buffer, used in place until close

  private Recommender(long handle) {
    this(handle, 0, null);
  }

  private Recommender(long handle, long ownedBuffer, Object keepAlive) {
    this.handle = handle;
    this.ownedBuffer = ownedBuffer;
    this.keepAlive = keepAlive;
    this.granularity = Native.granularity(handle);
    this.kMax = Native.kMax(handle);
    this.numItems = Native.numItems(handle);
    this.stateBytes = Native.stateBytes(handle);
  }

  /**
   * Verifies and opens a bundle, as {@code fmrl_open} (and Python's {@code Recommender.open}) accepts it:
   * a bundle directory or a one-file bundle ({@code NAME.fmrlb}, memory-mapped read-only). Every file's
   * sha256, the manifest and the program are checked;
   * the program is loaded (the ExecuTorch CPU backends). Defaults: unknown items are skipped,
   * exclude_seen off.
   *
   * @throws IllegalArgumentException when the path contains a NUL character
   * @throws FmrlException {@link FmrlStatus#BUNDLE} (with the reason) when the bundle is refused,
   *     {@link FmrlStatus#PROGRAM} when ExecuTorch cannot load its program
   */
  public static Recommender open(String path) throws FmrlException {
    Objects.requireNonNull(path, "path");
    return new Recommender(Native.open(path));
  }

  /**
   * A one-file bundle ({@code .fmrlb}) stored at [offset, offset + length) of an open file descriptor: on
   * Android, an uncompressed asset's {@code AssetFileDescriptor} ({@code getParcelFileDescriptor().getFd()},
   * {@code getStartOffset()}, {@code getLength()}). The pages are mapped read-only; the descriptor is neither
   * kept nor closed (close it once this returns). An offset that is not a multiple of 64 costs one copy
   * of the bundle (store the asset aligned, e.g. {@code noCompress} plus zipalign's 64-byte option).
   *
   * @throws FmrlException {@link FmrlStatus#BUNDLE} when the range is outside the file or the bundle is
   *     refused
   */
  public static Recommender openFd(int fd, long offset, long length) throws FmrlException {
    if (fd < 0 || offset < 0 || length < 0) {
      throw new IllegalArgumentException("fd " + fd + ", offset " + offset + ", length " + length);
    }
    return new Recommender(Native.openFd(fd, offset, length));
  }

  /**
   * A one-file bundle ({@code .fmrlb}) held in a byte array. The native side copies the bytes once (into a
   * 64-byte aligned buffer the library then uses in place, freed by {@link #close()}); the array is not
   * pinned or kept, and may be reused or dropped once this returns.
   */
  public static Recommender open(byte[] bundle) throws FmrlException {
    Objects.requireNonNull(bundle, "bundle");
    return openBytes(bundle, 0, bundle.length);
  }

  /**
   * A one-file bundle ({@code .fmrlb}) in a ByteBuffer's remaining bytes (position to limit; the buffer's
   * position is not changed). A direct buffer (e.g. {@code FileChannel.map}, {@code allocateDirect}) is
   * used in place, without a copy when its address is 64-byte aligned: this Recommender keeps a reference
   * to it until {@link #close()}, and the app must not change those bytes until then. A heap buffer is
   * copied as {@link #open(byte[])} does.
   */
  public static Recommender open(ByteBuffer bundle) throws FmrlException {
    Objects.requireNonNull(bundle, "bundle");
    if (bundle.isDirect()) {
      return new Recommender(Native.openDirect(bundle, bundle.position(), bundle.remaining()), 0, bundle);
    }
    if (bundle.hasArray()) {
      return openBytes(bundle.array(), bundle.arrayOffset() + bundle.position(), bundle.remaining());
    }
    byte[] copy = new byte[bundle.remaining()];  // a read-only heap buffer
    bundle.duplicate().get(copy);
    return openBytes(copy, 0, copy.length);
  }

  private static Recommender openBytes(byte[] data, int offset, int length) throws FmrlException {
    long[] owned = new long[1];
    long handle = Native.openBytes(data, offset, length, owned);
    return new Recommender(handle, owned[0], null);
  }

  /** The fmrl_runtime library's version ("0.1.0"). */
  public static String version() {
    return Native.version();
  }

  /** The read-locked live handle; pair every call with {@link #release()}. */
  long acquire() {
    lock.readLock().lock();
    if (handle == 0) {
      lock.readLock().unlock();
      throw new IllegalStateException("Recommender is closed");
    }
    return handle;
  }

  void release() {
    lock.readLock().unlock();
  }

  /** k_max without the open check (callers hold {@link #acquire()}). */
  int kMaxUnchecked() {
    return kMax;
  }

  private void checkOpen() {
    acquire();
    release();
  }

  /** The granularity s: the width of item and user vectors. */
  public int granularity() {
    checkOpen();
    return granularity;
  }

  /** The largest k {@link Session#recommend(int)} accepts. */
  public int kMax() {
    checkOpen();
    return kMax;
  }

  /** The number of items the bundle was exported with (N). */
  public long numItems() {
    checkOpen();
    return numItems;
  }

  /** N plus the items added so far by {@link #addItems}. */
  public long itemCount() {
    long rec = acquire();
    try {
      return Native.itemCount(rec);
    } finally {
      release();
    }
  }

  /** The size of every session's state in bytes (what {@link Session#toBytes()} returns). */
  public int stateBytes() {
    checkOpen();
    return stateBytes;
  }

  /** A new session (a new user, or a cold start): recommends the bundle's cold-start items. */
  public Session newSession() throws FmrlException {
    long rec = acquire();
    try {
      return new Session(this, Native.sessionNew(rec));
    } finally {
      release();
    }
  }

  /** A session from {@link Session#toBytes()} or Python's {@code Session.to_bytes()} (unsigned). */
  public Session restore(byte[] state) throws FmrlException {
    return restore(state, null);
  }

  /**
   * A session from saved bytes; {@code key} (null: none, else at least 16 bytes kept by the app) must be
   * given exactly when the state was signed with it ({@link Session#toBytes(byte[])}, or Python's
   * {@code to_bytes(key=...)}).
   *
   * @throws FmrlException {@link FmrlStatus#STATE} with Python's reason when the state is corrupt,
   *     truncated, edited, signed differently or from another bundle
   */
  public Session restore(byte[] state, byte[] key) throws FmrlException {
    Objects.requireNonNull(state, "state");
    long rec = acquire();
    try {
      return new Session(this, Native.restore(rec, state, key));
    } finally {
      release();
    }
  }

  /**
   * Adds items created after export (or replaces the vector of an item added before): {@code vectors[i]}
   * is the vector of {@code ids[i]}; every row has the same length, at least {@link #granularity()} (the
   * first s values are used). Export-time ids are refused.
   *
   * @return how many of the ids were not known before
   * @throws IllegalArgumentException when the lengths disagree, the rows are ragged or an id contains a NUL
   *     character (the C library takes NUL-terminated ids)
   * @throws FmrlException {@link FmrlStatus#ARGUMENT} for what the library refuses (short rows, non-finite
   *     values, export-time ids, empty ids or ids over 1,024 UTF-8 bytes...)
   */
  public int addItems(String[] ids, float[][] vectors) throws FmrlException {
    Objects.requireNonNull(ids, "ids");
    Objects.requireNonNull(vectors, "vectors");
    if (ids.length != vectors.length) {
      throw new IllegalArgumentException(ids.length + " ids but " + vectors.length + " vectors");
    }
    int dims = vectors.length == 0 ? 0 : Objects.requireNonNull(vectors[0], "vectors[0]").length;
    if ((long) dims * vectors.length > Integer.MAX_VALUE - 16) {
      throw new IllegalArgumentException("too many values in one call: add the items in parts");
    }
    float[] flat = new float[dims * vectors.length];
    for (int i = 0; i < vectors.length; i++) {
      float[] row = Objects.requireNonNull(vectors[i], "vectors[i]");
      if (row.length != dims) {
        throw new IllegalArgumentException("vectors[" + i + "] has " + row.length + " values, vectors[0] " + dims);
      }
      System.arraycopy(row, 0, flat, i * dims, dims);
    }
    long rec = acquire();
    try {
      return Native.addItems(rec, ids, flat, dims);
    } finally {
      release();
    }
  }

  /**
   * The vector (float[s]) of any known item, export-time or added.
   *
   * @throws FmrlException {@link FmrlStatus#UNKNOWN_ITEM} when the id is unknown
   */
  public float[] itemVector(String id) throws FmrlException {
    Objects.requireNonNull(id, "id");
    long rec = acquire();
    try {
      return Native.itemVector(rec, id);
    } finally {
      release();
    }
  }

  /**
   * Frees the native recommender. Waits for calls in flight on other threads; idempotent. Its sessions
   * can only be closed afterwards.
   */
  @Override
  public void close() {
    lock.writeLock().lock();
    try {
      if (handle != 0) {
        Native.close(handle);
        handle = 0;
        Native.freeBuffer(ownedBuffer);
        ownedBuffer = 0;
        keepAlive = null;
      }
    } finally {
      lock.writeLock().unlock();
    }
  }

  /** Whether {@link #close()} has been called. */
  public boolean isClosed() {
    lock.readLock().lock();
    try {
      return handle == 0;
    } finally {
      lock.readLock().unlock();
    }
  }
}
