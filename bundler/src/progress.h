// Progress reporting for long bundle operations, on stderr: a redrawn bar on
// a terminal, a plain line every 10% otherwise, nothing with --quiet.
#pragma once

#include <chrono>
#include <cstdint>
#include <string>

namespace airlock::bundler {

class Progress {
 public:
  Progress(std::string label, bool quiet);
  // Safe to call often; draws at most every 100 ms.
  void update(std::uint64_t done, std::uint64_t total);
  // Ends the bar line (if one was drawn).
  void finish();

 private:
  std::string label_;
  bool quiet_;
  bool tty_;
  bool drawn_ = false;
  int last_decile_ = -1;
  std::chrono::steady_clock::time_point start_;
};

// "1.50 GiB"
std::string format_bytes(double n_bytes);

}  // namespace airlock::bundler
