#include "bundle_commands.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <termios.h>
#include <unistd.h>

#include <cerrno>
#include <charconv>
#include <cstdio>
#include <cstring>
#include <ctime>
#include <iostream>

#include "airlock/common/json.h"
#include <sodium.h>

#include "airlock/common/version.h"
#include "airlock/verifier/bundle_reader.h"
#include "airlock/verifier/bundle_store.h"
#include "airlock/verifier/bundle_writer.h"
#include "airlock/verifier/mapped_file.h"
#include "airlock/verifier/trust_store.h"
#include "args.h"
#include "progress.h"
#include "terminal.h"

namespace airlock::bundler {
namespace {

using namespace airlock::verifier;

int fail(const Status& s) {
  std::fprintf(stderr, "airlock: %s\n", s.to_string().c_str());
  return exit_code(s.code());
}

int usage_error(const std::string& message) {
  std::fprintf(stderr, "airlock: %s\n(run 'airlock bundle help' for usage)\n", message.c_str());
  return 2;
}

Result<std::uint64_t> parse_uint(const std::string& text, const std::string& what) {
  std::uint64_t v = 0;
  auto [p, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc() || p != text.data() + text.size()) return invalid_argument(what + ": not a number: " + text);
  return v;
}

// "2027-01-31", "2027-01-31T12:00:00Z" or "+90d" (days from now).
Result<std::int64_t> parse_expiry(const std::string& text, std::int64_t now) {
  if (!text.empty() && text[0] == '+' && text.back() == 'd') {
    AIRLOCK_ASSIGN_OR_RETURN(std::uint64_t days, parse_uint(text.substr(1, text.size() - 2), "--expires"));
    if (days == 0 || days > 36500) return invalid_argument("--expires: 1 to 36500 days");
    return now + static_cast<std::int64_t>(days) * 86400;
  }
  std::tm tm{};
  const char* end = strptime(text.c_str(), "%Y-%m-%dT%H:%M:%SZ", &tm);
  if (end == nullptr || *end != '\0') {
    tm = {};
    end = strptime(text.c_str(), "%Y-%m-%d", &tm);
  }
  if (end == nullptr || *end != '\0')
    return invalid_argument("--expires: use YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ or +DAYSd");
  return static_cast<std::int64_t>(timegm(&tm));
}

// Reads a passphrase: first line of --passphrase-file, or from the terminal
// with echo off. Never from an environment variable (it would leak into
// /proc and child processes).
Result<std::string> read_passphrase(const Args& args, const char* prompt, bool confirm) {
  if (auto file = args.get("passphrase-file")) {
    AIRLOCK_ASSIGN_OR_RETURN(std::string text, read_small_file(*file, 4096));
    std::string line = text.substr(0, text.find('\n'));
    if (!line.empty() && line.back() == '\r') line.pop_back();
    if (line.empty()) return invalid_argument(*file + ": empty passphrase");
    return line;
  }
  int fd = ::open("/dev/tty", O_RDWR | O_CLOEXEC | O_NOCTTY);
  if (fd < 0)
    return invalid_argument("a passphrase is needed and there is no terminal: use --passphrase-file FILE");
  auto ask = [&](const char* text) -> std::string {
    (void)!::write(fd, text, std::strlen(text));
    termios old{}, quiet{};
    bool have_termios = ::tcgetattr(fd, &old) == 0;
    if (have_termios) {
      quiet = old;
      quiet.c_lflag &= ~static_cast<tcflag_t>(ECHO);
      ::tcsetattr(fd, TCSAFLUSH, &quiet);
    }
    std::string line;
    char c;
    while (::read(fd, &c, 1) == 1 && c != '\n') line.push_back(c);
    if (have_termios) ::tcsetattr(fd, TCSAFLUSH, &old);
    (void)!::write(fd, "\n", 1);
    return line;
  };
  std::string first = ask(prompt);
  if (confirm && ask("Repeat the passphrase: ") != first) {
    ::close(fd);
    return invalid_argument("the passphrases differ");
  }
  ::close(fd);
  if (first.empty()) return invalid_argument("empty passphrase (use --unencrypted for an unencrypted key)");
  return first;
}

Status write_file_exclusive(const std::string& path, const std::string& data, mode_t mode) {
  int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
  if (fd < 0) {
    if (errno == EEXIST) return already_exists(path + " already exists (refusing to overwrite a key)");
    return io_error("create " + path, errno);
  }
  ::fchmod(fd, mode);  // the umask must not widen or narrow a key's mode
  std::size_t done = 0;
  while (done < data.size()) {
    ssize_t n = ::write(fd, data.data() + done, data.size() - done);
    if (n < 0 && errno == EINTR) continue;
    if (n <= 0) {
      int e = n == 0 ? EIO : errno;
      ::close(fd);
      ::unlink(path.c_str());  // a partial key would block every later keygen
      return io_error("write " + path, e);
    }
    done += static_cast<std::size_t>(n);
  }
  int err = ::fsync(fd) != 0 ? errno : 0;
  if (::close(fd) != 0 && err == 0) err = errno;
  if (err != 0) {
    ::unlink(path.c_str());
    return io_error("write " + path, err);
  }
  return Status::ok();
}

Result<SecretKey> load_secret_key(const Args& args) {
  auto path = args.get("key");
  if (!path) return invalid_argument("--key SECRET_KEY_FILE is required");
  AIRLOCK_ASSIGN_OR_RETURN(std::string text, read_small_file(*path, 4096));
  return parse_secret_key(text, [&]() { return read_passphrase(args, "Passphrase for the secret key: ", false); });
}

unsigned threads_option(const Args& args, Status* status) {
  auto t = args.get("threads");
  if (!t) return 0;
  Result<std::uint64_t> n = parse_uint(*t, "--threads");
  if (!n.is_ok() || *n > 1024) {
    *status = invalid_argument("--threads must be 0..1024");
    return 0;
  }
  return static_cast<unsigned>(*n);
}

// ---------------------------------------------------------------- keygen

int cmd_keygen(const std::vector<std::string>& argv) {
  auto args = Args::parse(argv, {"out", "passphrase-file"}, {"unencrypted"});
  if (!args.is_ok()) return usage_error(args.status().message());
  auto out = args->get("out");
  if (!out || !args->positional().empty()) return usage_error("usage: airlock bundle keygen --out NAME [--unencrypted]");
  std::optional<std::string> passphrase;
  if (!args->has("unencrypted")) {
    Result<std::string> p = read_passphrase(*args, "Passphrase for the new secret key: ", true);
    if (!p.is_ok()) return fail(p.status());
    passphrase = *p;
  }
  for (const char* ext : {".key", ".pub"}) {
    struct stat st {};
    if (::lstat((*out + ext).c_str(), &st) == 0)
      return fail(already_exists(*out + ext + " already exists (refusing to overwrite a key)"));
  }
  SecretKey sk = generate_secret_key();
  std::string sk_text = format_secret_key(sk, passphrase);
  if (passphrase) sodium_memzero(passphrase->data(), passphrase->size());
  Status s = write_file_exclusive(*out + ".key", sk_text, 0600);
  sodium_memzero(sk_text.data(), sk_text.size());
  if (!s.is_ok()) return fail(s);
  s = write_file_exclusive(*out + ".pub", format_public_key(sk.public_key()), 0644);
  if (!s.is_ok()) {
    // A secret key without its public key is of no use: keygen is all or nothing.
    ::unlink((*out + ".key").c_str());
    return fail(s);
  }
  std::printf("secret key: %s.key (%s, mode 0600)\npublic key: %s.pub\nkey id:     %s\n", out->c_str(),
              passphrase ? "encrypted" : "UNENCRYPTED", out->c_str(), sk.id.to_string().c_str());
  return 0;
}

// ---------------------------------------------------------------- create

Result<std::vector<BundleInput>> collect_inputs(const Args& args) {
  std::vector<BundleInput> inputs;
  auto add = [&](FileRole role, const std::string& source) {
    std::string base = source.substr(source.rfind('/') == std::string::npos ? 0 : source.rfind('/') + 1);
    inputs.push_back({role, source, base});
  };
  for (const std::string& f : args.all("llm")) add(FileRole::kLlm, f);
  for (const std::string& f : args.all("reranker")) add(FileRole::kReranker, f);
  for (std::string f : args.all("embedding")) {
    // A model2vec static model is a directory: its three files go into the
    // bundle under embedding/ (the daemon finds them there).
    struct stat st {};
    if (::stat(f.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) {
      while (f.size() > 1 && f.back() == '/') f.pop_back();
      // One file per role: the vectors are the embedding, the other two its
      // tokenizer and configuration.
      const std::pair<const char*, FileRole> parts[] = {{"model.safetensors", FileRole::kEmbedding},
                                                        {"tokenizer.json", FileRole::kTokenizer},
                                                        {"config.json", FileRole::kConfig}};
      for (const auto& [part, role] : parts) {
        const std::string path = f + "/" + part;
        if (::stat(path.c_str(), &st) != 0 || !S_ISREG(st.st_mode))
          return invalid_argument("--embedding " + f + ": a model2vec directory needs " + part);
        inputs.push_back({role, path, std::string("embedding/") + part});
      }
      continue;
    }
    add(FileRole::kEmbedding, f);
  }
  for (const std::string& spec : args.all("file")) {
    std::size_t eq = spec.find('=');
    FileRole role;
    if (eq == std::string::npos || !parse_role(spec.substr(0, eq), &role))
      return invalid_argument("--file wants ROLE=PATH with ROLE one of llm, embedding, reranker, tokenizer, "
                              "license, config, other; got '" + spec + "'");
    add(role, spec.substr(eq + 1));
  }
  if (inputs.empty()) return invalid_argument("nothing to bundle: give --llm, --embedding, --reranker or --file ROLE=PATH");
  return inputs;
}

int cmd_create(const std::vector<std::string>& argv) {
  auto args = Args::parse(argv,
                          {"key", "name", "version", "llm", "embedding", "reranker", "file", "out", "expires", "chunk-size",
                           "passphrase-file", "threads"},
                          {"quiet"});
  if (!args.is_ok()) return usage_error(args.status().message());
  if (!args->positional().empty()) return usage_error("unexpected argument '" + args->positional()[0] + "'");
  auto name = args->get("name");
  auto version = args->get("version");
  if (!name || !version) return usage_error("--name and --version are required");
  std::optional<std::string> out = args->get("out");
  if (!out) out = *name + "-" + *version + ".airlock";
  CreateOptions opts;
  opts.name = *name;
  Result<std::uint64_t> v = parse_uint(*version, "--version");
  if (!v.is_ok()) return fail(v.status());
  opts.version = *v;
  opts.created_at = static_cast<std::int64_t>(std::time(nullptr));
  if (auto e = args->get("expires")) {
    Result<std::int64_t> t = parse_expiry(*e, opts.created_at);
    if (!t.is_ok()) return fail(t.status());
    if (*t <= opts.created_at) return usage_error("--expires is in the past");
    opts.expires_at = *t;
  }
  if (auto c = args->get("chunk-size")) {
    Result<std::uint64_t> n = parse_uint(*c, "--chunk-size");
    if (!n.is_ok()) return fail(n.status());
    opts.chunk_size = *n;
  }
  Status ts;
  opts.n_threads = threads_option(*args, &ts);
  if (!ts.is_ok()) return fail(ts);
  Result<std::vector<BundleInput>> inputs = collect_inputs(*args);
  if (!inputs.is_ok()) return fail(inputs.status());
  Result<SecretKey> key = load_secret_key(*args);
  if (!key.is_ok()) return fail(key.status().with_context("secret key"));

  bool quiet = args->has("quiet");
  Progress progress("create", quiet);
  opts.progress = [&](std::uint64_t done, std::uint64_t total) { progress.update(done, total); };
  Result<VerifiedBundle> made = create_bundle(*inputs, *key, opts, *out);
  progress.finish();
  if (!made.is_ok()) return fail(made.status());

  // Check what was written before anyone carries it across the gap.
  TrustStore self;
  self.add_key(key->public_key());
  Progress check_progress("check", quiet);
  VerifyOptions vo;
  vo.n_threads = opts.n_threads;
  vo.progress = [&](std::uint64_t done, std::uint64_t total) { check_progress.update(done, total); };
  Result<VerifiedBundle> checked = verify_bundle_file(*out, self, vo);
  check_progress.finish();
  if (!checked.is_ok()) {
    // What was written does not verify (the disk, or a source file changed
    // while it was read): nothing that fails its own check is left to be
    // carried across the gap. create_bundle refused to overwrite, so the
    // file is the one just made.
    ::unlink(out->c_str());
    return fail(checked.status().with_context("self-check of " + *out + " failed; it was removed"));
  }
  if (!quiet) {
    const Manifest& m = made->manifest;
    std::printf("created %s: %s version %llu, %zu files, %s, signed by %s\n", out->c_str(), m.name.c_str(),
                static_cast<unsigned long long>(m.version), m.files.size(),
                format_bytes(static_cast<double>(m.total_bytes())).c_str(), m.key_id.to_string().c_str());
    std::printf("manifest sha256 %s (self-check passed)\n", made->manifest_sha256.c_str());
  }
  return 0;
}

// ---------------------------------------------------------------- verify

int cmd_verify(const std::vector<std::string>& argv) {
  auto args = Args::parse(argv, {"trusted", "threads", "store"}, {"quiet"});
  if (!args.is_ok()) return usage_error(args.status().message());
  if (args->positional().size() != 1 || !args->get("trusted"))
    return usage_error("usage: airlock bundle verify BUNDLE --trusted DIR_OR_PUBKEY");
  Result<TrustStore> trust = TrustStore::load(*args->get("trusted"));
  if (!trust.is_ok()) return fail(trust.status().with_context("trusted keys"));
  VerifyOptions vo;
  Status ts;
  vo.n_threads = threads_option(*args, &ts);
  if (!ts.is_ok()) return fail(ts);
  bool quiet = args->has("quiet");
  Progress progress("verify", quiet);
  vo.progress = [&](std::uint64_t done, std::uint64_t total) { progress.update(done, total); };
  const std::string& path = args->positional()[0];
  Result<VerifiedBundle> vb = verify_bundle_file(path, *trust, vo);
  progress.finish();
  if (!vb.is_ok()) return fail(vb.status().with_context(path));
  if (auto store_dir = args->get("store")) {
    // "Not older": compare with the store's rollback record without importing.
    Result<BundleStore> store = BundleStore::open(*store_dir, BundleStore::Access::kReadOnly);
    if (!store.is_ok()) return fail(store.status());
    Result<std::optional<std::uint64_t>> highest = store->highest_version(vb->manifest.name);
    if (!highest.is_ok()) return fail(highest.status());
    if (*highest && vb->manifest.version <= **highest)
      return fail(verification_failed(path + ": rollback: " + vb->manifest.name + " version " +
                                      std::to_string(vb->manifest.version) +
                                      " is not newer than the imported version " + std::to_string(**highest)));
  }
  if (!quiet) {
    const Manifest& m = vb->manifest;
    std::printf("OK %s: %s version %llu, %zu files, %s, signed by trusted key %s\n", path.c_str(), m.name.c_str(),
                static_cast<unsigned long long>(m.version), m.files.size(),
                format_bytes(static_cast<double>(m.total_bytes())).c_str(), m.key_id.to_string().c_str());
  }
  return 0;
}

// ---------------------------------------------------------------- inspect

nlohmann::ordered_json manifest_json(const Manifest& m) {
  nlohmann::ordered_json j;
  j["name"] = m.name;
  j["version"] = m.version;
  j["created_at"] = format_utc(m.created_at);
  j["expires_at"] = m.expires_at ? nlohmann::ordered_json(format_utc(*m.expires_at)) : nlohmann::ordered_json();
  j["key_id"] = m.key_id.to_string();
  j["min_daemon_version"] = m.min_daemon_version;
  j["chunk_size"] = m.chunk_size;
  j["files"] = nlohmann::ordered_json::array();
  for (const ManifestFile& f : m.files) {
    nlohmann::ordered_json jf;
    jf["path"] = f.path;
    jf["role"] = role_name(f.role);
    jf["size"] = f.size;
    jf["sha256"] = to_hex(f.sha256);
    jf["chunks"] = f.chunk_sha256.size();
    if (f.model) {
      jf["model"] = {{"architecture", f.model->architecture},
                     {"parameter_count", f.model->parameter_count},
                     {"quantization", f.model->quantization},
                     {"context_length", f.model->context_length}};
    }
    j["files"].push_back(jf);
  }
  return j;
}

int cmd_inspect(const std::vector<std::string>& argv) {
  auto args = Args::parse(argv, {}, {"json"});
  if (!args.is_ok()) return usage_error(args.status().message());
  if (args->positional().size() != 1) return usage_error("usage: airlock bundle inspect BUNDLE [--json]");
  const std::string& path = args->positional()[0];
  Result<MappedFile> file = MappedFile::open(path);
  if (!file.is_ok()) return fail(file.status());
  InspectedBundle ib = inspect_bundle(file->bytes());
  bool readable = ib.archive_status.is_ok() && ib.manifest && ib.signature;
  if (args->has("json")) {
    nlohmann::ordered_json j;
    j["verified"] = false;
    j["note"] = "UNVERIFIED: read without checking signatures or hashes; run 'airlock bundle verify'";
    j["archive_error"] = ib.archive_status.is_ok() ? nlohmann::ordered_json() : nlohmann::ordered_json(ib.archive_status.message());
    j["manifest"] = ib.manifest ? manifest_json(*ib.manifest) : nlohmann::ordered_json();
    j["manifest_error"] = ib.manifest ? nlohmann::ordered_json() : nlohmann::ordered_json(ib.manifest_status.message());
    if (ib.signature) {
      j["signature"] = {{"key_id", ib.signature->key_id.to_string()},
                        {"trusted_comment", ib.signature->trusted_comment}};
    } else {
      j["signature"] = nullptr;
      j["signature_error"] = ib.signature_status.message();
    }
    j["entries"] = nlohmann::ordered_json::array();
    for (const InspectedEntry& e : ib.entries)
      j["entries"].push_back({{"name", e.name}, {"size", e.size}, {"kind", e.kind}});
    std::cout << j.dump(2, ' ', false, nlohmann::json::error_handler_t::replace) << "\n";
    return readable ? 0 : 1;
  }
  std::printf("%s  (UNVERIFIED: nothing below is trusted until 'airlock bundle verify' passes)\n", path.c_str());
  if (!ib.archive_status.is_ok()) std::printf("archive error: %s\n", ib.archive_status.message().c_str());
  if (ib.signature)
    std::printf("signed by:   key %s\ncomment:     %s\n", ib.signature->key_id.to_string().c_str(),
                shown(ib.signature->trusted_comment).c_str());
  else
    std::printf("signature:   unreadable (%s)\n", ib.signature_status.message().c_str());
  if (ib.manifest) {
    const Manifest& m = *ib.manifest;
    std::printf("name:        %s\nversion:     %llu\ncreated:     %s\nexpires:     %s\n"
                "min version: %s\nchunk size:  %s\n", m.name.c_str(), static_cast<unsigned long long>(m.version),
                format_utc(m.created_at).c_str(), m.expires_at ? format_utc(*m.expires_at).c_str() : "never",
                m.min_daemon_version.c_str(), format_bytes(static_cast<double>(m.chunk_size)).c_str());
    for (const ManifestFile& f : m.files) {
      std::printf("  %-10s %-40s %12s  sha256 %s\n", std::string(role_name(f.role)).c_str(), f.path.c_str(),
                  format_bytes(static_cast<double>(f.size)).c_str(), to_hex(f.sha256).c_str());
      if (f.model)
        std::printf("             model: %s, %llu parameters, %s, context %llu\n", f.model->architecture.c_str(),
                    static_cast<unsigned long long>(f.model->parameter_count), f.model->quantization.c_str(),
                    static_cast<unsigned long long>(f.model->context_length));
    }
  } else {
    std::printf("manifest:    unreadable (%s)\n", ib.manifest_status.message().c_str());
  }
  std::printf("archive entries: %zu\n", ib.entries.size());
  return readable ? 0 : 1;
}

// ---------------------------------------------------------------- import / list

int cmd_import(const std::vector<std::string>& argv) {
  auto args = Args::parse(argv, {"store", "trusted", "threads"}, {"allow-downgrade", "quiet"});
  if (!args.is_ok()) return usage_error(args.status().message());
  if (args->positional().size() != 1 || !args->get("store") || !args->get("trusted"))
    return usage_error("usage: airlock bundle import BUNDLE --store DIR --trusted DIR_OR_PUBKEY [--allow-downgrade]");
  Result<TrustStore> trust = TrustStore::load(*args->get("trusted"));
  if (!trust.is_ok()) return fail(trust.status().with_context("trusted keys"));
  Result<BundleStore> store = BundleStore::open(*args->get("store"));
  if (!store.is_ok()) return fail(store.status());
  ImportOptions io;
  io.allow_downgrade = args->has("allow-downgrade");
  Status ts;
  io.verify.n_threads = threads_option(*args, &ts);
  if (!ts.is_ok()) return fail(ts);
  bool quiet = args->has("quiet");
  Progress progress("import", quiet);
  io.verify.progress = [&](std::uint64_t done, std::uint64_t total) { progress.update(done, total); };
  const std::string& path = args->positional()[0];
  Result<ImportRecord> r = store->import_bundle(path, *trust, io);
  progress.finish();
  if (!r.is_ok()) return fail(r.status().with_context(path));
  if (!quiet)
    std::printf("imported %s version %llu into %s (key %s, manifest sha256 %s)%s\n", r->name.c_str(),
                static_cast<unsigned long long>(r->version), r->path.c_str(), r->key_id.c_str(),
                r->manifest_sha256.c_str(), r->downgrade ? " [DOWNGRADE allowed by operator]" : "");
  return 0;
}

int cmd_list(const std::vector<std::string>& argv) {
  auto args = Args::parse(argv, {"store"}, {});
  if (!args.is_ok()) return usage_error(args.status().message());
  if (!args->get("store") || !args->positional().empty()) return usage_error("usage: airlock bundle list --store DIR");
  Result<BundleStore> store = BundleStore::open(*args->get("store"), BundleStore::Access::kReadOnly);
  if (!store.is_ok()) return fail(store.status());
  Result<std::vector<ImportRecord>> rows = store->list_imports();
  if (!rows.is_ok()) return fail(rows.status());
  for (const ImportRecord& r : *rows)
    std::printf("%-32s %8llu  key %s  imported %s%s\n", r.name.c_str(), static_cast<unsigned long long>(r.version),
                r.key_id.c_str(), format_utc(r.imported_at).c_str(), r.downgrade ? "  (downgrade)" : "");
  return 0;
}

}  // namespace

void print_bundle_usage() {
  std::printf(
      "usage: airlock bundle COMMAND ...\n"
      "  keygen  --out NAME [--unencrypted] [--passphrase-file F]\n"
      "          writes NAME.key (minisign secret key, 0600) and NAME.pub\n"
      "  create  --key K --name N --version V [--llm F.gguf] [--embedding F.gguf|MODEL2VEC_DIR]\n"
      "          [--reranker F.gguf] [--file ROLE=PATH ...] [--out N-V.airlock] [--expires DATE|+DAYSd]\n"
      "          [--chunk-size BYTES] [--passphrase-file F] [--threads N] [--quiet]\n"
      "  verify  BUNDLE --trusted DIR_OR_PUBKEY [--store DIR] [--threads N] [--quiet]\n"
      "          (--store: also refuse a version not newer than the store's)\n"
      "  inspect BUNDLE [--json]      (unverified view)\n"
      "  import  BUNDLE --store DIR --trusted DIR_OR_PUBKEY [--allow-downgrade] [--quiet]\n"
      "  list    --store DIR\n"
      "exit status: 0 ok, 1 verification failed, 2 usage or I/O error\n");
}

int run_bundle_command(const std::vector<std::string>& args) {
  if (args.empty() || args[0] == "help" || args[0] == "--help") {
    print_bundle_usage();
    return args.empty() ? 2 : 0;
  }
  std::vector<std::string> rest(args.begin() + 1, args.end());
  const std::string& cmd = args[0];
  if (cmd == "keygen") return cmd_keygen(rest);
  if (cmd == "create") return cmd_create(rest);
  if (cmd == "verify") return cmd_verify(rest);
  if (cmd == "inspect") return cmd_inspect(rest);
  if (cmd == "import") return cmd_import(rest);
  if (cmd == "list") return cmd_list(rest);
  return usage_error("unknown bundle command '" + cmd + "'");
}

}  // namespace airlock::bundler
