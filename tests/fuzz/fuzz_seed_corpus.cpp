// Writes seed inputs for the fuzzers into DIR/{manifest,bundle,gguf}/.
#include <sys/stat.h>

#include <cstdio>
#include <fstream>
#include <string>

#include "airlock/verifier/bundle_writer.h"
#include "fuzz_keys.h"

namespace {
void write(const std::string& path, const std::string& data) {
  std::ofstream(path, std::ios::binary).write(data.data(), static_cast<std::streamsize>(data.size()));
}
}  // namespace

int main(int argc, char** argv) {
  using namespace airlock::verifier;
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_seed_corpus DIR\n");
    return 2;
  }
  std::string dir = argv[1];
  for (const char* sub : {"", "/manifest", "/bundle", "/gguf", "/work"}) ::mkdir((dir + sub).c_str(), 0755);
  // A tiny GGUF v3 header: one metadata key, one F32 tensor of 4 elements.
  std::string gguf("GGUF", 4);
  auto u32 = [&](std::uint32_t v) { gguf.append(reinterpret_cast<const char*>(&v), 4); };
  auto u64 = [&](std::uint64_t v) { gguf.append(reinterpret_cast<const char*>(&v), 8); };
  auto str = [&](const std::string& s) { u64(s.size()); gguf += s; };
  u32(3); u64(1); u64(1);
  str("general.architecture"); u32(8); str("llama");
  str("w"); u32(1); u64(4); u32(0); u64(0);
  gguf.resize((gguf.size() + 31) / 32 * 32, '\0');
  gguf += std::string(16, '\0');
  write(dir + "/gguf/seed.gguf", gguf);
  write(dir + "/work/model.gguf", gguf);
  write(dir + "/work/LICENSE", "MIT\n");
  write(dir + "/work/data.bin", std::string(150000, 'x'));

  CreateOptions o;
  o.name = "fuzz";
  o.version = 1;
  o.created_at = 1780000000;
  o.chunk_size = 64 * 1024;
  airlock::Result<VerifiedBundle> b = create_bundle({{FileRole::kLlm, dir + "/work/model.gguf", "model.gguf"},
                                                     {FileRole::kLicense, dir + "/work/LICENSE", "LICENSE"},
                                                     {FileRole::kOther, dir + "/work/data.bin", "d/data.bin"}},
                                                    airlock::fuzz::fuzz_key(), o, dir + "/bundle/seed.airlock");
  if (!b.is_ok()) {
    std::fprintf(stderr, "%s\n", b.status().to_string().c_str());
    return 1;
  }
  write(dir + "/manifest/manifest.json", b->manifest_bytes);
  write(dir + "/manifest/manifest.json.minisig", b->signature_text);
  write(dir + "/manifest/key.pub", format_public_key(airlock::fuzz::fuzz_key().public_key()));
  return 0;
}
