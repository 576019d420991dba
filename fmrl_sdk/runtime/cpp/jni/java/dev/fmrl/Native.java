package dev.fmrl;

/**
 * The natives of libfmrl_jni (registered by its JNI_OnLoad), one per C call. Package-private: handles are
 * guarded by {@link Recommender} and {@link Session}, which never pass a closed one.
 *
 * <p>Loading: {@code System.loadLibrary("fmrl_jni")} (on Android, libfmrl_jni.so, libfmrl_runtime.so and
 * the ExecuTorch libraries in the APK's jniLibs/ABI folder), unless the system property
 * {@code dev.fmrl.library} names the library file's absolute path ({@code System.load}).
 */
final class Native {
  static {
    String path = System.getProperty("dev.fmrl.library");
    if (path != null && !path.isEmpty()) {
      System.load(path);
    } else {
      System.loadLibrary("fmrl_jni");
    }
  }

  private Native() {}

  static native String version();

  static native long open(String path) throws FmrlException;

  static native long openFd(int fd, long offset, long length) throws FmrlException;

  /** Copies data[offset, offset + length) into a native buffer kept until {@link #freeBuffer}: owned[0]. */
  static native long openBytes(byte[] data, int offset, int length, long[] owned) throws FmrlException;

  static native void freeBuffer(long buffer);

  static native long openDirect(java.nio.ByteBuffer buffer, long position, long length) throws FmrlException;

  static native void close(long rec);

  static native int granularity(long rec);

  static native int kMax(long rec);

  static native long numItems(long rec);

  static native long itemCount(long rec);

  static native int stateBytes(long rec);

  static native long sessionNew(long rec) throws FmrlException;

  static native long restore(long rec, byte[] state, byte[] key) throws FmrlException;

  static native void sessionFree(long session);

  static native byte[] toBytes(long rec, long session, byte[] key) throws FmrlException;

  static native boolean observe(long rec, long session, String itemId) throws FmrlException;

  static native long observed(long session) throws FmrlException;

  static native int recommend(long rec, long session, int k, int excludeSeen, String[] ids, float[] scores)
      throws FmrlException;

  static native float[] itemVector(long rec, String id) throws FmrlException;

  static native int addItems(long rec, String[] ids, float[] vectors, int dims) throws FmrlException;
}
