// An app's use of the fmrl runtime: one user on one device (C++ wrapper fmrl_runtime.hpp over the C ABI
// fmrl_runtime.h, the same calls JNI or Swift bindings wrap).
//
//   fmrl_app BUNDLE_DIR USER_STATE_FILE ITEM_ID [ITEM_ID ...]
//
// Opens and verifies the bundle, restores the user's session from USER_STATE_FILE (a new one the first
// time, or when the saved state belongs to another bundle), observes the items the user just interacted
// with (external ids), prints the top-10 not yet seen, and saves the session for the next launch.
#include <cstdio>
#include <fstream>
#include <iterator>
#include <string>
#include <vector>

#include "fmrl_runtime.hpp"

int main(int argc, char** argv) try {
  if (argc < 4) {
    std::fprintf(stderr, "usage: %s BUNDLE_DIR USER_STATE_FILE ITEM_ID [ITEM_ID ...]\n", argv[0]);
    return 2;
  }
  fmrl::check_version();  // the fmrl_runtime library this app loaded serves the header it was compiled with
  fmrl_set_log_callback([](int level, const char* message, void*) {  // errors arrive as exceptions
    if (level == FMRL_LOG_WARN) std::fprintf(stderr, "fmrl: %s\n", message);
  }, nullptr);
  const fmrl::Recommender rec(argv[1]);
  std::ifstream saved_file(argv[2], std::ios::binary);
  const std::vector<uint8_t> saved((std::istreambuf_iterator<char>(saved_file)), std::istreambuf_iterator<char>());
  fmrl::Session session = rec.restore_or_new(saved);
  for (int i = 3; i < argc; ++i)
    if (!session.observe(argv[i])) std::fprintf(stderr, "skipped %s (not in the catalogue)\n", argv[i]);
  for (const auto& [id, score] : session.recommend(10, /*exclude_seen=*/true)) std::printf("%s\t%.6f\n", id.c_str(), score);

  const std::vector<uint8_t> state = session.to_bytes();
  const std::string tmp = std::string(argv[2]) + ".tmp";  // write, then rename: never a half-written state
  std::ofstream(tmp, std::ios::binary).write(reinterpret_cast<const char*>(state.data()), state.size());
  if (std::rename(tmp.c_str(), argv[2]) != 0) throw std::runtime_error(std::string("cannot save ") + argv[2]);
  return 0;
} catch (const std::exception& e) {
  std::fprintf(stderr, "error: %s\n", e.what());
  return 2;
}
