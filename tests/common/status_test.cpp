#include "airlock/common/status.h"

#include <gtest/gtest.h>

namespace airlock {
namespace {

TEST(StatusTest, CodesMapToHttpAndExitCodes) {
  EXPECT_EQ(http_status(StatusCode::kOk), 200);
  EXPECT_EQ(http_status(StatusCode::kInvalidArgument), 400);
  EXPECT_EQ(http_status(StatusCode::kNotFound), 404);
  EXPECT_EQ(http_status(StatusCode::kVerificationFailed), 422);
  EXPECT_EQ(http_status(StatusCode::kResourceExhausted), 429);
  EXPECT_EQ(http_status(StatusCode::kUnavailable), 503);
  EXPECT_EQ(http_status(StatusCode::kInternal), 500);
  EXPECT_EQ(exit_code(StatusCode::kOk), 0);
  EXPECT_EQ(exit_code(StatusCode::kVerificationFailed), 1);
  EXPECT_EQ(exit_code(StatusCode::kInvalidArgument), 2);
  EXPECT_EQ(exit_code(StatusCode::kIoError), 2);
}

TEST(StatusTest, ContextIsPrependedAndOkStaysOk) {
  Status s = verification_failed("chunk 3 mismatch").with_context("model.gguf");
  EXPECT_EQ(s.code(), StatusCode::kVerificationFailed);
  EXPECT_EQ(s.message(), "model.gguf: chunk 3 mismatch");
  EXPECT_EQ(s.to_string(), "verification_failed: model.gguf: chunk 3 mismatch");
  EXPECT_TRUE(Status::ok().with_context("x").is_ok());
}

Result<int> half(int x) {
  if (x % 2 != 0) return invalid_argument("odd");
  return x / 2;
}

Result<int> quarter(int x) {
  AIRLOCK_ASSIGN_OR_RETURN(int h, half(x));
  return half(h);
}

TEST(ResultTest, CarriesValueOrStatus) {
  Result<int> ok = quarter(8);
  ASSERT_TRUE(ok.is_ok());
  EXPECT_EQ(*ok, 2);
  Result<int> bad = quarter(6);
  ASSERT_FALSE(bad.is_ok());
  EXPECT_EQ(bad.status().code(), StatusCode::kInvalidArgument);
}

TEST(ResultTest, OkStatusIsNotAValue) {
  Result<int> r{Status::ok()};
  EXPECT_FALSE(r.is_ok());
  EXPECT_EQ(r.status().code(), StatusCode::kInternal);
}

TEST(ResultDeathTest, ValueOfFailureAborts) {
  Result<int> r{not_found("x")};
  EXPECT_DEATH((void)r.value(), "value\\(\\) on a failed Result");
}

}  // namespace
}  // namespace airlock
