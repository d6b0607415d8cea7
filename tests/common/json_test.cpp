// airlock/common/json.h: nlohmann::json's internal checks stay on in
// release builds and throw instead of reading out of bounds.
#include "airlock/common/json.h"

#include "airlock/common/json_depth.h"

#include <gtest/gtest.h>

#include <stdexcept>
#include <string>

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

// The pass before a parse finds nesting past the limit (and wide objects)
// without building anything: it stops at the first level too many.
TEST(JsonTest, TheTextCheckFindsDepthAndWidthBeforeAParse) {
  auto nested = [](int depth, const std::string& inner) {
    std::string s;
    for (int i = 0; i < depth; ++i) s += i % 2 ? "{\"k\":" : "[";
    s += inner;
    for (int i = depth - 1; i >= 0; --i) s += i % 2 ? "}" : "]";
    return s;
  };
  EXPECT_FALSE(check_json_text<nlohmann::json>(nested(kMaxJsonDepth, "1")).deep);
  EXPECT_TRUE(check_json_text<nlohmann::json>(nested(kMaxJsonDepth + 1, "1")).deep);
  EXPECT_TRUE(check_json_text<nlohmann::ordered_json>(std::string(8u << 20, '[')).deep);  // not valid JSON either
  EXPECT_FALSE(check_json_text<nlohmann::json>("[" + std::string(1000, '1').insert(1, ",") + "]").deep);
  std::string wide = "{";
  for (int i = 0; i <= static_cast<int>(kMaxJsonObjectKeys); ++i) wide += (i ? ",\"" : "\"") + std::to_string(i) + "\":0";
  wide += "}";
  EXPECT_TRUE(check_json_text<nlohmann::json>(wide).wide);
  EXPECT_FALSE(check_json_text<nlohmann::json>(wide).deep);
  EXPECT_TRUE(json_text_has_wide_object<nlohmann::json>(wide));
  EXPECT_FALSE(json_text_has_wide_object<nlohmann::json>(nested(1000, "1")));  // depth is not its business
  // It counts the values a parse would build, at every level.
  EXPECT_EQ(check_json_text<nlohmann::json>(R"({"a": [1, "x", null, true, 2.5, {"b": []}], "c": {}})").values, 10u);
  EXPECT_EQ(check_json_text<nlohmann::json>("[1, [2, 3]]").values, 5u);
  EXPECT_EQ(check_json_text<nlohmann::json>("7").values, 1u);
}

// The same pass names the first integer literal that nlohmann::json would
// turn into a double (outside -2^63 .. 2^64-1), as written; floats are not
// integers however large, and the edges of int64 and uint64 fit.
TEST(JsonTest, TheTextCheckFindsIntegersBeyond64Bits) {
  using nlohmann::ordered_json;
  EXPECT_EQ(check_json_text<ordered_json>(R"({"a":[1,18446744073709551616,-9223372036854775809]})").big_integer,
            "18446744073709551616");
  EXPECT_EQ(check_json_text<nlohmann::json>("-9223372036854775809").big_integer, "-9223372036854775809");
  EXPECT_EQ(check_json_text<ordered_json>(R"({"k":"18446744073709551616","n":-18446744073709551616})").big_integer,
            "-18446744073709551616");  // a string is not a number
  for (const char* fits : {"18446744073709551615", "-9223372036854775808", "0", "-0", "1e20", "2.0",
                           "18446744073709551616.0", "1E19", "-1e-5", "184467440737095516160e-1"})
    EXPECT_EQ(check_json_text<ordered_json>(std::string("[") + fits + "]").big_integer, "") << fits;
}

}  // namespace
}  // namespace airlock
