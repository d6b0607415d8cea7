// airlock/common/json.h: nlohmann::json's internal checks stay on in
// release builds and throw instead of reading out of bounds.
#include "airlock/common/json.h"

#include <gtest/gtest.h>

#include <stdexcept>

namespace airlock {
namespace {

TEST(JsonTest, AMissingKeyOfAConstObjectThrowsInsteadOfReadingPastTheMap) {
  const nlohmann::json j = nlohmann::json::parse(R"({"a": {}})");
  EXPECT_EQ(j["a"], nlohmann::json::object());
  EXPECT_THROW((void)j["b"], std::logic_error);
  EXPECT_THROW((void)j["a"]["function"], std::logic_error);
  const nlohmann::ordered_json o = nlohmann::ordered_json::parse(R"({"a": 1})");
  EXPECT_THROW((void)o["b"], std::logic_error);
}

}  // namespace
}  // namespace airlock
