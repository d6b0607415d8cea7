// Reads of a mapped file that survive the file shrinking. Internal to the
// verifier.
//
// Bundles and store files are hashed straight from a memory mapping. If the
// file becomes shorter while it is mapped (truncated by another process,
// removable media pulled out, a network file system losing the file), a read
// of a page past the new end raises SIGBUS, which would end the process.
// read_guarded() runs a read so that such a fault makes it return false
// instead; the caller reports "the file changed while it was read".
//
// `read` is abandoned mid-way with siglongjmp on a fault, so it must only
// read memory and call code that owns nothing and holds no lock: memcpy,
// SHA-256 updates. No object with a destructor may live between this call
// and the faulting read. Any other SIGBUS (a bug, a fault outside a guarded
// read, a signal sent by kill) goes to the handler that was installed before
// (by default, ending the process as usual).
//
// Thread-safety: any thread, concurrently; each thread's guard is its own.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>

#include "airlock/common/status.h"
#include "airlock/verifier/sha256.h"

namespace airlock::verifier {

bool read_guarded(void (*read)(void* context), void* context);

template <typename F>
bool read_guarded(F& read) {
  return read_guarded([](void* c) { (*static_cast<F*>(c))(); }, &read);
}

// memcpy from a mapping; false if the source faulted.
bool copy_guarded(void* to, const std::uint8_t* from, std::size_t n_bytes);

// SHA-256 of mapped bytes; kIoError naming `what` if the mapping faulted.
Result<Sha256Digest> sha256_guarded(std::span<const std::uint8_t> mapped, const std::string& what);

// The message for a mapped file that faulted, naming `what`.
Status file_shrank(const std::string& what);

}  // namespace airlock::verifier
