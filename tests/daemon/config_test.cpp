// airlockd.toml parsing: defaults, every key, and refusals that name the key.
#include <gtest/gtest.h>

#include "config.h"

namespace airlock::daemon {
namespace {

TEST(ConfigTest, DefaultsAreLocalAndSafe) {
  Result<Config> c = parse_config("", "t.toml");
  ASSERT_TRUE(c.is_ok());
  EXPECT_EQ(c->listen_host, "127.0.0.1");
  EXPECT_EQ(c->listen_port, 8080);
  EXPECT_FALSE(c->verify_full);
  EXPECT_FALSE(c->audit_text);
  EXPECT_TRUE(c->tls_cert.empty());
}

TEST(ConfigTest, EveryKey) {
  Result<Config> c = parse_config(R"(
listen = "[::1]:9000"
store = "/s"
state = "/st"
trusted = "/t"
model = "m"
verify_on_load = "full"
threads = 4
kv_cache_mib = 256
max_running = 8
max_waiting = 10
prefill_chunk = 128
max_body_bytes = 100000
drain_seconds = 5
http_threads = 32
audit_text = true
[tls]
cert = "/c.pem"
key = "/k.pem"
client_ca = "/ca.pem"
)", "t.toml");
  ASSERT_TRUE(c.is_ok()) << c.status().to_string();
  EXPECT_EQ(c->listen_host, "::1");
  EXPECT_EQ(c->listen_port, 9000);
  EXPECT_EQ(c->store, "/s");
  EXPECT_EQ(c->model, "m");
  EXPECT_TRUE(c->verify_full);
  EXPECT_EQ(c->threads, 4);
  EXPECT_EQ(c->kv_cache_mib, 256u);
  EXPECT_EQ(c->max_waiting, 10);
  EXPECT_EQ(c->http_threads, 32);
  EXPECT_TRUE(c->audit_text);
  EXPECT_EQ(c->tls_client_ca, "/ca.pem");
}

TEST(ConfigTest, RefusalsNameTheKey) {
  const std::vector<std::pair<std::string, std::string>> cases = {
      {"lissten = \"127.0.0.1:1\"", "unknown key 'lissten'"},
      {"listen = \"localhost:8080\"", "not a numeric IP address"},
      {"listen = \"127.0.0.1\"", "HOST:PORT"},
      {"listen = \"127.0.0.1:70000\"", "bad port"},
      {"listen = 8080", "listen"},
      {"threads = -1", "threads"},
      {"threads = \"2\"", "threads: must be an integer"},
      {"verify_on_load = \"some\"", "verify_on_load"},
      {"audit_text = 1", "audit_text"},
      {"[tls]\ncert = \"/c\"", "cert and key go together"},
      {"[tls]\nclient_ca = \"/c\"", "client_ca needs"},
      {"[tls]\nkeyfile = \"/c\"", "unknown key 'keyfile'"},
      {"max_running = 0", "max_running"},
      {"store = [", "t.toml:1"},
  };
  for (const auto& [text, want] : cases) {
    Result<Config> c = parse_config(text, "t.toml");
    ASSERT_FALSE(c.is_ok()) << text;
    EXPECT_EQ(c.status().code(), StatusCode::kInvalidArgument);
    EXPECT_NE(c.status().message().find(want), std::string::npos) << text << " -> " << c.status().message();
  }
}

TEST(ConfigTest, MissingFile) {
  EXPECT_EQ(load_config("/nonexistent/airlockd.toml", true).status().code(), StatusCode::kNotFound);
  EXPECT_TRUE(load_config("/nonexistent/airlockd.toml", false).is_ok());
}

}  // namespace
}  // namespace airlock::daemon
