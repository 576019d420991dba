// An app's use of the fmrl runtime: one user on one device (C++ wrapper fmrl_runtime.hpp over the C ABI
// fmrl_runtime.h, the same calls JNI or Swift bindings wrap).
//
//   fmrl_app [--open path|fd|buffer] [--offset N] [--length N] BUNDLE USER_STATE_FILE ITEM_ID [ITEM_ID ...]
//
// Opens and verifies the bundle: path (default) a directory or NAME.fmrlb; fd / buffer a one-file bundle at
// bytes [offset, offset + length) of the file BUNDLE (default: all of it), as an APK stores an asset, mapped
// from an open descriptor / read into memory first. Restores the user's session from USER_STATE_FILE (a new
// one the first time, or when it belongs to another bundle), observes the items the user just interacted
// with, prints the top-10 not yet seen ("id<TAB>score" lines), and saves the session for the next launch.
#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fmrl_runtime.hpp"

int main(int argc, char** argv) try {
  std::string how = "path";
  uint64_t offset = 0, length = 0;  // length 0: to the end of the file
  int a = 1;
  for (; a + 1 < argc && std::string(argv[a]).rfind("--", 0) == 0; a += 2) {
    const std::string flag = argv[a];
    if (flag == "--open") how = argv[a + 1];
    else if (flag == "--offset") offset = std::stoull(argv[a + 1]);
    else if (flag == "--length") length = std::stoull(argv[a + 1]);
    else a = argc;  // unknown flag: usage
  }
  if (argc - a < 3 || (how != "path" && how != "fd" && how != "buffer")) {
    std::fprintf(stderr, "usage: %s [--open path|fd|buffer] [--offset N] [--length N] BUNDLE USER_STATE_FILE "
                         "ITEM_ID [ITEM_ID ...]\n", argv[0]);
    return 2;
  }
  const char *bundle = argv[a], *state_path = argv[a + 1];
  fmrl::check_version();  // the fmrl_runtime library this app loaded serves the header it was compiled with
  fmrl_set_log_callback([](int level, const char* message, void*) {  // errors arrive as exceptions
    if (level == FMRL_LOG_WARN) std::fprintf(stderr, "fmrl: %s\n", message);
  }, nullptr);
  if (how != "path" && length == 0) length = std::filesystem::file_size(bundle) - offset;
  std::vector<char> bytes;  // buffer: declared before rec, so it outlives it (the library may use it in place)
  const fmrl::Recommender rec = [&] {
    if (how == "path") return fmrl::Recommender(bundle);
    if (how == "buffer") {
      std::ifstream in(bundle, std::ios::binary);
      bytes.resize(length);
      if (!in.seekg(offset) || !in.read(bytes.data(), length)) throw std::runtime_error("cannot read the range");
      return fmrl::Recommender::from_buffer(bytes.data(), bytes.size());
    }
    const int fd = open(bundle, O_RDONLY | O_CLOEXEC);  // an Android asset: AAsset_openFileDescriptor64
    if (fd < 0) throw std::runtime_error(std::string("cannot open ") + bundle);
    struct Closer { int fd; ~Closer() { close(fd); } } closer{fd};  // the library keeps no descriptor
    return fmrl::Recommender::from_fd(fd, offset, length);
  }();
  std::ifstream saved_file(state_path, std::ios::binary);
  const std::vector<uint8_t> saved((std::istreambuf_iterator<char>(saved_file)), std::istreambuf_iterator<char>());
  fmrl::Session session = rec.restore_or_new(saved);
  for (int i = a + 2; i < argc; ++i)
    if (!session.observe(argv[i])) std::fprintf(stderr, "skipped %s (not in the catalogue)\n", argv[i]);
  for (const auto& [id, score] : session.recommend(10, /*exclude_seen=*/true)) std::printf("%s\t%.6f\n", id.c_str(), score);

  const std::vector<uint8_t> state = session.to_bytes();
  const std::string tmp = std::string(state_path) + ".tmp";  // write, then rename: never a half-written state
  std::ofstream(tmp, std::ios::binary).write(reinterpret_cast<const char*>(state.data()), state.size());
  if (std::rename(tmp.c_str(), state_path) != 0) throw std::runtime_error(std::string("cannot save ") + state_path);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
