// Model facts read from a GGUF file's header, for the bundle manifest.
//
// This is a bounded reader of the header, metadata and tensor table only; it
// never loads weights. The file is untrusted: every count, length and offset
// is checked against the bytes that remain before it is used, so a hostile
// file yields kVerificationFailed ("gguf: ...") and never a crash, a huge
// allocation or a long loop. The inference engine has its own full reader;
// this one exists so the staging-host tool needs no engine.
//
// Thread-safety: pure functions.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "airlock/common/status.h"

namespace airlock::verifier {

struct ModelFacts {
  std::string architecture;           // general.architecture, e.g. "llama"
  std::uint64_t parameter_count = 0;  // sum over tensors of the product of their dimensions
  std::string quantization;           // from general.file_type ("Q4_K_M", "F16", ...), else the
                                      // tensor type holding the most elements ("F32", "Q8_0", ...)
  std::uint64_t context_length = 0;   // "<arch>.context_length", 0 when absent
  std::uint32_t gguf_version = 0;     // 2 or 3
  std::uint64_t tensor_count = 0;
};

// True when the bytes start with the GGUF magic.
bool looks_like_gguf(std::span<const std::uint8_t> first_bytes);

// Parses `file` (the whole file, e.g. a mapping). Never reads outside it.
Result<ModelFacts> read_gguf_facts(std::span<const std::uint8_t> file);

// Parses a memory mapping of a file that may shrink while it is read
// (another process truncating it): the header is read through guarded
// copies, and a fault is kIoError naming `what` instead of SIGBUS.
// `first_copy_bytes` is the length of the first copy (grown four times while
// the header goes on past it, up to `max_copy_bytes`: a longer header is
// kVerificationFailed); tests and the fuzz target make them small.
Result<ModelFacts> read_gguf_facts_mapped(std::span<const std::uint8_t> mapped, const std::string& what,
                                          std::uint64_t first_copy_bytes = 1 << 20,
                                          std::uint64_t max_copy_bytes = 256u << 20);

// Maps `path` read-only and parses it as above. kNotFound / kIoError for the OS.
Result<ModelFacts> read_gguf_facts_file(const std::string& path);

}  // namespace airlock::verifier
