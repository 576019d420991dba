// libfmrl_jni: the Java API (jni/java/dev/fmrl) over fmrl_runtime's C ABI (include/fmrl_runtime.h) only.
//
// The natives are static methods of dev.fmrl.Native, registered in JNI_OnLoad (nothing but JNI_OnLoad is
// exported). Handles travel as jlong; the Java classes guard them (a read lock around every recommender
// call, close under the write lock; sessions synchronised), so this file never sees a freed handle.
//
// JNI rules kept here (checked by tests/test_jni.py under -Xcheck:jni): every JNI call that may throw is
// followed by ExceptionCheck before the next one; each native creates at most a handful of local references
// and deletes the ones made in loops at once; no C++ exception crosses into the JVM; no JNI call inside a
// critical region (arrays are copied, never pinned). Strings cross as UTF-16 (GetStringRegion/NewString)
// converted to and from standard UTF-8 here, because JNI's *StringUTF* functions speak "modified UTF-8"
// (a NUL as two bytes, characters beyond U+FFFF as two 3-byte surrogates), which is not what the C library
// compares item ids with.
#include <jni.h>

#include <cstdint>
#include <cstring>
#include <new>
#include <string>
#include <vector>

#include "fmrl_runtime.h"

namespace {

jclass g_fmrl_exception;       // dev.fmrl.FmrlException (a global reference, taken in JNI_OnLoad)
jmethodID g_fmrl_exception_init;  // FmrlException(int code, String message)

fmrl_recommender* rec_of(jlong handle) { return reinterpret_cast<fmrl_recommender*>(static_cast<intptr_t>(handle)); }
fmrl_session* session_of(jlong handle) { return reinterpret_cast<fmrl_session*>(static_cast<intptr_t>(handle)); }
jlong handle_of(const void* pointer) { return static_cast<jlong>(reinterpret_cast<intptr_t>(pointer)); }

// Thrown by the helpers below once a Java exception is pending: unwinds to the native method's guard,
// which returns to Java (where the pending exception is raised).
struct JavaPending {};

void check(JNIEnv* env) {
  if (env->ExceptionCheck()) throw JavaPending{};
}

void throw_java(JNIEnv* env, const char* class_name, const char* message) {
  jclass cls = env->FindClass(class_name);
  if (env->ExceptionCheck()) throw JavaPending{};
  env->ThrowNew(cls, message);
  env->DeleteLocalRef(cls);
  throw JavaPending{};
}

// Standard UTF-8 (invalid sequences become U+FFFD) -> a new Java string (a local reference).
jstring new_string(JNIEnv* env, const char* utf8) {
  const auto* p = reinterpret_cast<const unsigned char*>(utf8);
  const size_t length = std::strlen(utf8);
  std::u16string out;
  out.reserve(length);
  for (size_t i = 0; i < length;) {
    const unsigned char c = p[i];
    uint32_t code = 0xFFFD;
    size_t need = 0;
    uint32_t min = 0;
    if (c < 0x80) {
      code = c;
    } else if ((c & 0xE0) == 0xC0) {
      code = c & 0x1F, need = 1, min = 0x80;
    } else if ((c & 0xF0) == 0xE0) {
      code = c & 0x0F, need = 2, min = 0x800;
    } else if ((c & 0xF8) == 0xF0) {
      code = c & 0x07, need = 3, min = 0x10000;
    }
    size_t used = 1;
    if (need) {
      size_t j = 1;
      while (j <= need && i + j < length && (p[i + j] & 0xC0) == 0x80) code = (code << 6) | (p[i + j++] & 0x3F);
      if (j <= need) {  // truncated sequence: one U+FFFD for the bytes read
        code = 0xFFFD;
        used = j;
      } else {
        used = need + 1;
        if (code < min || code > 0x10FFFF || (code >= 0xD800 && code <= 0xDFFF)) code = 0xFFFD;
      }
    }
    i += used;
    if (code >= 0x10000) {
      code -= 0x10000;
      out.push_back(static_cast<char16_t>(0xD800 + (code >> 10)));
      out.push_back(static_cast<char16_t>(0xDC00 + (code & 0x3FF)));
    } else {
      out.push_back(static_cast<char16_t>(code));
    }
  }
  jstring s = env->NewString(reinterpret_cast<const jchar*>(out.data()), static_cast<jsize>(out.size()));
  check(env);
  return s;
}

// A Java string -> standard UTF-8 (a lone surrogate becomes U+FFFD, as String.getBytes(UTF_8) does).
// `what` names the argument in the exceptions: NullPointerException for null, IllegalArgumentException for
// a NUL character (the C ABI takes NUL-terminated strings).
std::string utf8_of(JNIEnv* env, jstring s, const char* what) {
  if (!s) throw_java(env, "java/lang/NullPointerException", what);
  const jsize length = env->GetStringLength(s);
  jchar small[64];
  std::vector<jchar> large;
  jchar* units = small;
  if (length > 64) {
    large.resize(static_cast<size_t>(length));
    units = large.data();
  }
  env->GetStringRegion(s, 0, length, units);
  check(env);
  std::string out;
  out.reserve(static_cast<size_t>(length) + 8);
  for (jsize i = 0; i < length; ++i) {
    uint32_t code = units[i];
    if (code == 0) throw_java(env, "java/lang/IllegalArgumentException", (std::string(what) + " contains a NUL character").c_str());
    if (code >= 0xD800 && code <= 0xDBFF && i + 1 < length && units[i + 1] >= 0xDC00 && units[i + 1] <= 0xDFFF) {
      code = 0x10000 + ((code - 0xD800) << 10) + (units[i + 1] - 0xDC00);
      ++i;
    } else if (code >= 0xD800 && code <= 0xDFFF) {
      code = 0xFFFD;
    }
    if (code < 0x80) {
      out.push_back(static_cast<char>(code));
    } else if (code < 0x800) {
      out.push_back(static_cast<char>(0xC0 | (code >> 6)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else if (code < 0x10000) {
      out.push_back(static_cast<char>(0xE0 | (code >> 12)));
      out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    } else {
      out.push_back(static_cast<char>(0xF0 | (code >> 18)));
      out.push_back(static_cast<char>(0x80 | ((code >> 12) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | ((code >> 6) & 0x3F)));
      out.push_back(static_cast<char>(0x80 | (code & 0x3F)));
    }
  }
  return out;
}

// A failed fmrl_* call -> FmrlException(status, fmrl_last_error()).
[[noreturn]] void throw_fmrl(JNIEnv* env, fmrl_status status) {
  std::string message = fmrl_last_error();  // copied: valid only until the next fmrl_* call on this thread
  if (message.empty()) message = fmrl_status_string(status);
  jstring text = new_string(env, message.c_str());
  jobject error = env->NewObject(g_fmrl_exception, g_fmrl_exception_init, static_cast<jint>(status), text);
  env->DeleteLocalRef(text);
  check(env);
  env->Throw(static_cast<jthrowable>(error));
  env->DeleteLocalRef(error);
  throw JavaPending{};
}

void ok(JNIEnv* env, fmrl_status status) {
  if (status != FMRL_OK) throw_fmrl(env, status);
}

std::vector<uint8_t> bytes_of(JNIEnv* env, jbyteArray array) {
  std::vector<uint8_t> out(static_cast<size_t>(env->GetArrayLength(array)));
  env->GetByteArrayRegion(array, 0, static_cast<jsize>(out.size()), reinterpret_cast<jbyte*>(out.data()));
  check(env);
  return out;
}

// Runs a native method's body: a pending Java exception or a C++ one ends it with `fallback` (the Java side
// never sees the return value of a call that threw).
template <typename T, typename F>
T guarded(JNIEnv* env, T fallback, F&& body) {
  try {
    return body();
  } catch (const JavaPending&) {
  } catch (const std::bad_alloc&) {
    if (!env->ExceptionCheck()) {
      jclass cls = env->FindClass("java/lang/OutOfMemoryError");
      if (!env->ExceptionCheck()) env->ThrowNew(cls, "fmrl_jni: native allocation failed"), env->DeleteLocalRef(cls);
    }
  } catch (const std::exception& e) {
    if (!env->ExceptionCheck()) {
      jclass cls = env->FindClass("java/lang/IllegalStateException");
      if (!env->ExceptionCheck()) env->ThrowNew(cls, e.what()), env->DeleteLocalRef(cls);
    }
  } catch (...) {
    if (!env->ExceptionCheck()) {
      jclass cls = env->FindClass("java/lang/IllegalStateException");
      if (!env->ExceptionCheck()) env->ThrowNew(cls, "fmrl_jni: unexpected native exception"), env->DeleteLocalRef(cls);
    }
  }
  return fallback;
}

// ---- natives of dev.fmrl.Native ----

jstring n_version(JNIEnv* env, jclass) {
  return guarded<jstring>(env, nullptr, [&] { return new_string(env, fmrl_version()); });
}

jlong n_open(JNIEnv* env, jclass, jstring path) {
  return guarded<jlong>(env, 0, [&] {
    const std::string p = utf8_of(env, path, "path");
    fmrl_recommender* rec = nullptr;
    ok(env, fmrl_open(p.c_str(), nullptr, &rec));
    return handle_of(rec);
  });
}

// A one-file bundle at [offset, offset + length) of an open file descriptor (Android's AssetFileDescriptor).
jlong n_open_fd(JNIEnv* env, jclass, jint fd, jlong offset, jlong length) {
  return guarded<jlong>(env, 0, [&] {
    fmrl_recommender* rec = nullptr;
    ok(env, fmrl_open_fd(fd, static_cast<uint64_t>(offset), static_cast<uint64_t>(length), nullptr, &rec));
    return handle_of(rec);
  });
}

// A one-file bundle from a Java byte[] range: copied once into a 64-byte aligned native buffer, which
// fmrl_open_buffer then uses in place; the buffer's address goes to owned[0], for Native.freeBuffer after
// fmrl_close (Recommender.close does both). The Java array is never pinned.
jlong n_open_bytes(JNIEnv* env, jclass, jbyteArray data, jint offset, jint length, jlongArray owned) {
  return guarded<jlong>(env, 0, [&] {
    const size_t size = static_cast<size_t>(length);
    void* buffer = size ? ::operator new(size, std::align_val_t{64}) : nullptr;
    try {
      if (size) env->GetByteArrayRegion(data, offset, length, static_cast<jbyte*>(buffer));
      check(env);
      fmrl_recommender* rec = nullptr;
      ok(env, fmrl_open_buffer(buffer, size, nullptr, &rec));
      const jlong address = handle_of(buffer);
      env->SetLongArrayRegion(owned, 0, 1, &address);
      if (env->ExceptionCheck()) {
        fmrl_close(rec);
        throw JavaPending{};
      }
      return handle_of(rec);
    } catch (...) {
      if (buffer) ::operator delete(buffer, std::align_val_t{64});
      throw;
    }
  });
}

void n_free_buffer(JNIEnv*, jclass, jlong buffer) {
  if (buffer) ::operator delete(reinterpret_cast<void*>(static_cast<intptr_t>(buffer)), std::align_val_t{64});
}

// A one-file bundle in a direct ByteBuffer's [position, position + length), used in place: the Java side
// keeps the buffer referenced (and the app keeps it unchanged) until close.
jlong n_open_direct(JNIEnv* env, jclass, jobject buffer, jlong position, jlong length) {
  return guarded<jlong>(env, 0, [&] {
    auto* base = static_cast<uint8_t*>(env->GetDirectBufferAddress(buffer));
    check(env);
    if (!base) throw_java(env, "java/lang/IllegalArgumentException", "the ByteBuffer is not a direct buffer");
    fmrl_recommender* rec = nullptr;
    ok(env, fmrl_open_buffer(base + position, static_cast<size_t>(length), nullptr, &rec));
    return handle_of(rec);
  });
}

void n_close(JNIEnv*, jclass, jlong rec) { fmrl_close(rec_of(rec)); }

jint n_granularity(JNIEnv*, jclass, jlong rec) { return fmrl_granularity(rec_of(rec)); }
jint n_k_max(JNIEnv*, jclass, jlong rec) { return fmrl_k_max(rec_of(rec)); }
jlong n_num_items(JNIEnv*, jclass, jlong rec) { return fmrl_num_items(rec_of(rec)); }
jlong n_item_count(JNIEnv*, jclass, jlong rec) { return fmrl_item_count(rec_of(rec)); }
jint n_state_bytes(JNIEnv*, jclass, jlong rec) { return static_cast<jint>(fmrl_state_bytes(rec_of(rec))); }

jlong n_session_new(JNIEnv* env, jclass, jlong rec) {
  return guarded<jlong>(env, 0, [&] {
    fmrl_session* session = nullptr;
    ok(env, fmrl_session_new(rec_of(rec), &session));
    return handle_of(session);
  });
}

jlong n_restore(JNIEnv* env, jclass, jlong rec, jbyteArray data, jbyteArray key) {
  return guarded<jlong>(env, 0, [&] {
    const std::vector<uint8_t> state = bytes_of(env, data);
    std::vector<uint8_t> secret;
    if (key) secret = bytes_of(env, key);
    fmrl_session* session = nullptr;
    ok(env, fmrl_session_restore(rec_of(rec), state.data(), state.size(), key ? secret.data() : nullptr,
                                 secret.size(), &session));
    return handle_of(session);
  });
}

void n_session_free(JNIEnv*, jclass, jlong session) { fmrl_session_free(session_of(session)); }

jbyteArray n_to_bytes(JNIEnv* env, jclass, jlong rec, jlong session, jbyteArray key) {
  return guarded<jbyteArray>(env, nullptr, [&] {
    std::vector<uint8_t> secret;
    if (key) secret = bytes_of(env, key);
    std::vector<uint8_t> out(fmrl_state_bytes(rec_of(rec)) + 32);
    size_t size = 0;
    ok(env, fmrl_session_to_bytes(rec_of(rec), session_of(session), key ? secret.data() : nullptr, secret.size(),
                                  out.data(), out.size(), &size));
    jbyteArray result = env->NewByteArray(static_cast<jsize>(size));
    check(env);
    env->SetByteArrayRegion(result, 0, static_cast<jsize>(size), reinterpret_cast<const jbyte*>(out.data()));
    check(env);
    return result;
  });
}

jboolean n_observe(JNIEnv* env, jclass, jlong rec, jlong session, jstring item) {
  return guarded<jboolean>(env, JNI_FALSE, [&] {
    const std::string id = utf8_of(env, item, "itemId");
    int advanced = 0;
    ok(env, fmrl_observe(rec_of(rec), session_of(session), id.c_str(), &advanced));
    return advanced ? JNI_TRUE : JNI_FALSE;
  });
}

jlong n_observed(JNIEnv* env, jclass, jlong session) {
  return guarded<jlong>(env, 0, [&] {
    uint64_t observed = 0;
    ok(env, fmrl_session_counters(session_of(session), &observed, nullptr, nullptr));
    return static_cast<jlong>(observed);
  });
}

// Fills ids_out / scores_out (both of length >= k when k is in range) and returns the number written.
jint n_recommend(JNIEnv* env, jclass, jlong rec, jlong session, jint k, jint exclude_seen, jobjectArray ids_out,
                 jfloatArray scores_out) {
  return guarded<jint>(env, 0, [&] {
    const size_t capacity = static_cast<size_t>(env->GetArrayLength(ids_out));
    const char* small_ids[32];
    float small_scores[32];
    std::vector<const char*> large_ids;
    std::vector<float> large_scores;
    const char** ids = small_ids;
    float* scores = small_scores;
    if (capacity > 32) {
      large_ids.resize(capacity);
      large_scores.resize(capacity);
      ids = large_ids.data();
      scores = large_scores.data();
    }
    size_t count = capacity;
    ok(env, fmrl_recommend(rec_of(rec), session_of(session), k, exclude_seen, capacity ? ids : nullptr,
                           capacity ? scores : nullptr, nullptr, &count));
    for (size_t i = 0; i < count; ++i) {  // one local reference at a time
      jstring id = new_string(env, ids[i]);
      env->SetObjectArrayElement(ids_out, static_cast<jsize>(i), id);
      env->DeleteLocalRef(id);
      check(env);
    }
    env->SetFloatArrayRegion(scores_out, 0, static_cast<jsize>(count), scores);
    check(env);
    return static_cast<jint>(count);
  });
}

jfloatArray n_item_vector(JNIEnv* env, jclass, jlong rec, jstring item) {
  return guarded<jfloatArray>(env, nullptr, [&] {
    const std::string id = utf8_of(env, item, "id");
    std::vector<float> vector(static_cast<size_t>(fmrl_granularity(rec_of(rec))));
    ok(env, fmrl_item_vector(rec_of(rec), id.c_str(), vector.data(), vector.size()));
    jfloatArray result = env->NewFloatArray(static_cast<jsize>(vector.size()));
    check(env);
    env->SetFloatArrayRegion(result, 0, static_cast<jsize>(vector.size()), vector.data());
    check(env);
    return result;
  });
}

// ids: String[count]; flat: float[count * dims], row-major. Returns how many ids were new.
jint n_add_items(JNIEnv* env, jclass, jlong rec, jobjectArray ids, jfloatArray flat, jint dims) {
  return guarded<jint>(env, 0, [&] {
    const jsize count = env->GetArrayLength(ids);
    std::vector<std::string> names;
    names.reserve(static_cast<size_t>(count));
    for (jsize i = 0; i < count; ++i) {
      auto id = static_cast<jstring>(env->GetObjectArrayElement(ids, i));
      check(env);
      try {
        names.push_back(utf8_of(env, id, ("ids[" + std::to_string(i) + "]").c_str()));
      } catch (...) {
        env->DeleteLocalRef(id);
        throw;
      }
      env->DeleteLocalRef(id);
    }
    std::vector<const char*> pointers;
    pointers.reserve(names.size());
    for (const auto& name : names) pointers.push_back(name.c_str());
    std::vector<float> vectors(static_cast<size_t>(env->GetArrayLength(flat)));
    env->GetFloatArrayRegion(flat, 0, static_cast<jsize>(vectors.size()), vectors.data());
    check(env);
    size_t added = 0;
    ok(env, fmrl_add_items(rec_of(rec), pointers.data(), pointers.size(), vectors.data(),
                           static_cast<size_t>(dims), &added));
    return static_cast<jint>(added);
  });
}

const JNINativeMethod kMethods[] = {
    {const_cast<char*>("version"), const_cast<char*>("()Ljava/lang/String;"), reinterpret_cast<void*>(n_version)},
    {const_cast<char*>("open"), const_cast<char*>("(Ljava/lang/String;)J"), reinterpret_cast<void*>(n_open)},
    {const_cast<char*>("openFd"), const_cast<char*>("(IJJ)J"), reinterpret_cast<void*>(n_open_fd)},
    {const_cast<char*>("openBytes"), const_cast<char*>("([BII[J)J"), reinterpret_cast<void*>(n_open_bytes)},
    {const_cast<char*>("freeBuffer"), const_cast<char*>("(J)V"), reinterpret_cast<void*>(n_free_buffer)},
    {const_cast<char*>("openDirect"), const_cast<char*>("(Ljava/nio/ByteBuffer;JJ)J"),
     reinterpret_cast<void*>(n_open_direct)},
    {const_cast<char*>("close"), const_cast<char*>("(J)V"), reinterpret_cast<void*>(n_close)},
    {const_cast<char*>("granularity"), const_cast<char*>("(J)I"), reinterpret_cast<void*>(n_granularity)},
    {const_cast<char*>("kMax"), const_cast<char*>("(J)I"), reinterpret_cast<void*>(n_k_max)},
    {const_cast<char*>("numItems"), const_cast<char*>("(J)J"), reinterpret_cast<void*>(n_num_items)},
    {const_cast<char*>("itemCount"), const_cast<char*>("(J)J"), reinterpret_cast<void*>(n_item_count)},
    {const_cast<char*>("stateBytes"), const_cast<char*>("(J)I"), reinterpret_cast<void*>(n_state_bytes)},
    {const_cast<char*>("sessionNew"), const_cast<char*>("(J)J"), reinterpret_cast<void*>(n_session_new)},
    {const_cast<char*>("restore"), const_cast<char*>("(J[B[B)J"), reinterpret_cast<void*>(n_restore)},
    {const_cast<char*>("sessionFree"), const_cast<char*>("(J)V"), reinterpret_cast<void*>(n_session_free)},
    {const_cast<char*>("toBytes"), const_cast<char*>("(JJ[B)[B"), reinterpret_cast<void*>(n_to_bytes)},
    {const_cast<char*>("observe"), const_cast<char*>("(JJLjava/lang/String;)Z"), reinterpret_cast<void*>(n_observe)},
    {const_cast<char*>("observed"), const_cast<char*>("(J)J"), reinterpret_cast<void*>(n_observed)},
    {const_cast<char*>("recommend"), const_cast<char*>("(JJII[Ljava/lang/String;[F)I"),
     reinterpret_cast<void*>(n_recommend)},
    {const_cast<char*>("itemVector"), const_cast<char*>("(JLjava/lang/String;)[F"),
     reinterpret_cast<void*>(n_item_vector)},
    {const_cast<char*>("addItems"), const_cast<char*>("(J[Ljava/lang/String;[FI)I"),
     reinterpret_cast<void*>(n_add_items)},
};

}  // namespace

// Caches FmrlException, registers the natives, and refuses (UnsatisfiedLinkError) a libfmrl_runtime that
// cannot serve the header this library was compiled with.
extern "C" JNIEXPORT jint JNICALL JNI_OnLoad(JavaVM* vm, void*) {
  JNIEnv* env = nullptr;
  if (vm->GetEnv(reinterpret_cast<void**>(&env), JNI_VERSION_1_6) != JNI_OK) return JNI_ERR;
  if (!FMRL_CHECK_VERSION()) {
    const std::string message = std::string("libfmrl_jni was built for fmrl_runtime " FMRL_VERSION_STRING
                                            ", the loaded library is ") + fmrl_version();
    jclass cls = env->FindClass("java/lang/UnsatisfiedLinkError");
    if (!env->ExceptionCheck()) env->ThrowNew(cls, message.c_str());
    return JNI_ERR;
  }
  jclass exception = env->FindClass("dev/fmrl/FmrlException");
  if (env->ExceptionCheck()) return JNI_ERR;
  g_fmrl_exception = static_cast<jclass>(env->NewGlobalRef(exception));
  env->DeleteLocalRef(exception);
  if (!g_fmrl_exception) return JNI_ERR;
  g_fmrl_exception_init = env->GetMethodID(g_fmrl_exception, "<init>", "(ILjava/lang/String;)V");
  if (env->ExceptionCheck()) return JNI_ERR;
  jclass natives = env->FindClass("dev/fmrl/Native");
  if (env->ExceptionCheck()) return JNI_ERR;
  const jint registered =
      env->RegisterNatives(natives, kMethods, static_cast<jint>(sizeof kMethods / sizeof kMethods[0]));
  env->DeleteLocalRef(natives);
  if (registered != JNI_OK || env->ExceptionCheck()) return JNI_ERR;
  return JNI_VERSION_1_6;
}
